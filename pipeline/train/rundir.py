"""The run directory <train.storage_path>/<train.run_name> on a local disk or any fsspec URL (s3://, gs://, ...).

Ray Train writes `checkpoint_<step>/` folders and its `checkpoint_manager_snapshot.json` there; the run adds
`config.yaml`, `stats.jsonl` and `samples/`. The snapshot is the one source of truth for where the run is: a rerun
resumes from its latest registered checkpoint, whatever other `checkpoint_*` folders a kill left on disk (a folder
persisted but never registered is written again when the run reaches its step).
"""

import json

from pipeline.storage import Folder

SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's list of registered checkpoints


class RunDir(Folder):
    """The run's folder <storage_path>/<run_name>; `ray_storage` names its parent, where Ray Train puts the run."""

    def __init__(self, storage_path, run_name, storage_options=None):
        super().__init__(f"{str(storage_path).rstrip('/')}/{run_name}", storage_options)
        self.storage_path, self.run_name = str(storage_path), run_name
        self.root = self.path.rsplit("/", 1)[0]

    def __getstate__(self):
        return {"storage_path": self.storage_path, "run_name": self.run_name, "storage_options": self.storage_options}

    def __setstate__(self, state):
        RunDir.__init__(self, state["storage_path"], state["run_name"], state["storage_options"])

    def ray_storage(self):
        """(storage_path, storage_filesystem) for ray.train.RunConfig: local paths as they are, URLs through fsspec."""
        return self.root, self.ray_storage_filesystem()

    def registered(self):
        """Names of the checkpoints Ray Train has registered, oldest first: the last is the one a rerun resumes from
        (its snapshot's latest). [] for a run without checkpoints."""
        text = self.read_text(SNAPSHOT)
        if text is None:
            return []
        try:
            snapshot = json.loads(text)
        except ValueError as e:
            raise ValueError(f"{self.url}/{SNAPSHOT} is not readable ({e}): Ray Train cannot resume the run from it. "
                             "Move it aside to train the run again from step 0 (its checkpoints stay; "
                             "train.init_checkpoint=<one of them> starts a new run from one)") from None
        order = sorted(zip(snapshot["checkpoint_report_indices"], snapshot["checkpoint_results"]), key=lambda p: p[0])
        return [r["checkpoint_dir_name"] for _, r in order]  # no score attribute: the latest is the last reported

    def unregister(self, names):
        """Rewrite Ray Train's snapshot without the checkpoints `names`: its latest becomes the newest one left."""
        snapshot = json.loads(self.read_text(SNAPSHOT))
        kept = [(r, i) for r, i in zip(snapshot["checkpoint_results"], snapshot["checkpoint_report_indices"])
                if r["checkpoint_dir_name"] not in names]
        snapshot["checkpoint_results"] = [r for r, _ in kept]
        snapshot["checkpoint_report_indices"] = [i for _, i in kept]
        snapshot["latest_checkpoint_result"] = max(kept, key=lambda p: p[1])[0] if kept else None
        pending = [(r, v) for r, v in zip(snapshot["pending_training_results"], snapshot["pending_validation_specs"])
                   if r["checkpoint_dir_name"] not in names]
        snapshot["pending_training_results"] = [r for r, _ in pending]
        snapshot["pending_validation_specs"] = [v for _, v in pending]
        for key in ("validated_checkpoint_dir_names", "timed_out_validation_checkpoint_dir_names",
                    "failed_validation_checkpoint_dir_names"):
            snapshot[key] = [n for n in snapshot.get(key, []) if n not in names]
        self.write_text(SNAPSHOT, json.dumps(snapshot))

    def move_aside(self, name):
        """Rename folder `name` to damaged_<name> (damaged_<name>.2, ... if taken); returns the new name. Nothing is
        deleted: a damaged checkpoint stays for inspection."""
        aside, n = f"damaged_{name}", 1
        while self.exists(aside):
            n += 1
            aside = f"damaged_{name}.{n}"
        self.move(name, aside)
        return aside
