"""The student's start for a mixture teacher: g(x, σ, s) regressed onto the teacher's exact denoiser, cached under
<cache.root>/teacher-start/ (the train stage does this by itself when it is missing; no Ray needed).

    python -m jobs.teacher_start [--config FILE] [--set student.init_steps=4000]
    python -m jobs.teacher_start --ship     # rebuild the embedded default's start that ships with the project

Exit status: 0 done, 2 bad input (a teacher with weights to copy needs no start).
"""

import sys

from jobs.common import fail, input_errors, stage_parser
from pipeline.storage import Folder
from pipeline.config import EMBEDDED_DEFAULT, ConfigError, load_config
from pipeline.teachers import build_teacher
from pipeline.train.state import student_kwargs
from pipeline.train.teacher_start import SHIPPED, needs_regression, teacher_start


def main(argv=None):
    p = stage_parser(__doc__, "student.init_steps=4000", "YAML config (default: the embedded digits default)")
    p.add_argument("--ship", action="store_true", help=f"also copy the start into {SHIPPED.name}/ of the package")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config or EMBEDDED_DEFAULT, args.set)
        teacher = build_teacher(cfg)
        kwargs = student_kwargs(cfg, teacher)
        if not needs_regression(cfg, teacher):
            raise ConfigError("config key 'student.init_from_teacher': only a mixture teacher's student needs a "
                              "regressed start (a network teacher's weights are copied), and it must be true")
    except input_errors() as e:
        return fail(e, 2)
    url = teacher_start(cfg, teacher, kwargs, log=lambda line: print(line, flush=True))
    if args.ship:
        folder, name = url.rsplit("/", 1)
        SHIPPED.mkdir(exist_ok=True)
        (SHIPPED / name).write_bytes(Folder(folder, cfg.cache.storage_options).read_bytes(name))
        print(f"shipped: {SHIPPED / name}")
    print(f"teacher start: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
