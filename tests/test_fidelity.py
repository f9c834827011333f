import pytest

from benchmarks.fidelity import VARIANTS, parse_args


def test_variants_default_to_all_and_added_ones_run_after_the_named():
    assert list(parse_args([]).overrides) == list(VARIANTS)
    args = parse_args(["--variants", "default", "--add", "gan_plain", "train.gan_start=0", "train.diffaug=''",
                       "--add", "seed_1", "train.seed=1"])
    assert args.overrides == {"default": [], "gan_plain": ["train.gan_start=0", "train.diffaug=''"],
                              "seed_1": ["train.seed=1"]}
    assert list(parse_args(["--add", "only", "train.seed=2"]).overrides) == ["only"]


def test_an_unknown_variant_is_refused_naming_the_way_to_define_one(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--variants", "gan_typo"])
    err = capsys.readouterr().err
    assert "unknown variants ['gan_typo']" in err and "--add NAME KEY=VALUE" in err


def test_second_stage_variants_start_from_the_first_stage_checkpoint():
    assert "train.init_checkpoint={stage1}" in VARIANTS["ctm_600+gan_200"]
    assert VARIANTS["ctm_600+gan_200"][1:] == ["train.steps=200", "train.gan_start=0"]
    assert VARIANTS["ctm_600+ctm_200"][1:] == ["train.steps=200"]
