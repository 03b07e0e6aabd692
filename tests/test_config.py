from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rfsweep.errors import ConfigError
from rfsweep.run.preflight import preflight
from tests.helpers import CONF, compose_cfg, run_cli, tiny

GROUPS = ["formulation", "backbone", "data", "conditioning", "autoencoder", "trainer", "optimizer", "ema", "sampler",
          "eval", "logger"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_config_composes_and_validates(group):
    assert options(group), group
    for option in options(group):
        extra = ["data.resolution=64"] if group == "autoencoder" and option != "identity" else []
        extra += ["data.path=/tmp"] if group == "data" and option in ("imagenet", "cc12m", "coco") else []
        cfg = compose_cfg([f"{group}={option}", *extra])
        OmegaConf.to_container(cfg.get(group), resolve=True)
        preflight(cfg, data=False)  # /tmp holds no data set


def test_every_experiment_composes():
    experiments = sorted(p.stem for p in (Path(CONF) / "experiment").glob("*.yaml"))
    assert {"formulation_grid", "backbone_comparison", "demo"} <= set(experiments)
    for exp in experiments:
        # the paper's grid is swept over its data sets (real folders): one job of it, with a folder
        extra = ["data=imagenet", "data.path=/tmp"] if exp == "formulation_grid" else []
        cfg = compose_cfg([f"+experiment={exp}", *extra])
        preflight(cfg, data=False)  # the paper's grid also passes its memory plan (FSDP over 8 GPUs, checkpointing)
        assert cfg.name == exp or cfg.name


@pytest.mark.parametrize("override,key", [
    ("optimizer.lr=-1", "optimizer.lr"),
    ("ema.decay=1.5", "ema.decay"),
    ("conditioning.drop_prob=1.2", "conditioning.drop_prob"),
    ("trainer.precision=fp8", "trainer.precision"),
    ("sampler.shift=0", "sampler.shift"),
    ("eval.weights=[ema,best]", "eval.weights"),
    ("trainer.max_steps=0", "trainer.max_steps"),
    ("data.resolution=9", "data.resolution"),
    ("trainer.devices=0", "trainer.devices"),
    ("trainer.devices=3", "trainer.batch_size"),
    ("trainer.accelerator=tpu", "trainer.accelerator"),
])
def test_out_of_range_values_fail_with_one_line(override, key):
    cfg = compose_cfg([override])
    with pytest.raises(ConfigError) as e:
        preflight(cfg)
    msg = str(e.value)
    assert key in msg and "allowed" in msg and "\n" not in msg


@pytest.mark.long
def test_cli_rejects_bad_values_before_compute(tmp_path):
    for args, key in ((["optimizer.lr=-1"], "optimizer.lr"),
                      (['formulation.variant="rf/mode(2.50)"'], "mode"),
                      (['formulation.variant="rf/wobble"'], "rf/wobble"),
                      (["data.name=imagenet1k"], "data.name")):
        r = run_cli([*tiny(tmp_path), *args], timeout=120)
        assert r.returncode == 2, r.stderr[-2000:]
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and key in lines[0], r.stderr
        assert any(w in lines[0] for w in ("allowed", "outside", "expected"))  # says what is allowed
        assert not list((tmp_path / "runs").rglob("*.ckpt"))


def test_misspelled_or_mistyped_keys_fail_at_composition(tmp_path):
    from hydra.errors import ConfigCompositionException

    for bad in ("trainer.max_stepz=3", "optimizer.learning_rate=1e-3", "trainer.max_steps=many", "sampler.cfg=5"):
        with pytest.raises(ConfigCompositionException):
            compose_cfg([bad])
    r = run_cli([*tiny(tmp_path), "trainer.max_stepz=3"], timeout=120)
    assert r.returncode != 0 and "max_stepz" in r.stderr and not list(tmp_path.rglob("*.ckpt"))


def test_every_group_option_composes_onto_its_schema_and_every_rule_has_a_field():
    """No rule can be orphaned by a renamed key: each lives on a schema field, and every option of every group is
    composed on a schema (its keys are the schema's fields)."""
    from dataclasses import fields

    from rfsweep.run.schema import SCHEMAS, rules_for

    for group in ("trainer", "optimizer", "ema", "sampler", "eval", "data", "conditioning", "autoencoder",
                  "backbone", "logger"):
        schema_fields = {f.name for (g, _), cls in SCHEMAS.items() if g == group for f in fields(cls)}
        seen = set()
        for option in sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml")):
            node = compose_cfg([f"{group}={option}"])[group]
            assert set(node.keys()) <= schema_fields, (group, option, set(node.keys()) - schema_fields)
            seen |= set(node.keys())
        assert set(rules_for(group)) <= seen | {"clip_tokens"}, (group, set(rules_for(group)) - seen)


@pytest.mark.parametrize("overrides, allowed", [
    (["backbone.width=63"], "a multiple of 4, e.g. 60 or 64"),
    (["backbone=dit", "backbone.width=66", "backbone.heads=3"], "a multiple of 12, e.g. 60 or 72"),
    (["backbone.depth=3", "backbone.width=null", "backbone.heads=5"], "a multiple of 20, e.g. 180 or 200"),
])
def test_a_width_that_does_not_split_into_heads_is_one_line_before_any_backbone(overrides, allowed):
    with pytest.raises(ConfigError) as e:
        preflight(compose_cfg(overrides))
    msg = str(e.value)
    assert "backbone.width=" in msg and "backbone.heads=" in msg and allowed in msg and "\n" not in msg
    preflight(compose_cfg(["backbone.width=64"]))


def test_a_moved_key_says_in_one_line_where_it_lives_now(tmp_path):
    from rfsweep.run.schema import MOVED_KEYS, moved_key

    assert moved_key(["trainer.lr=0.1"]) == ("config error: trainer.lr is no longer a key: it moved to optimizer.lr "
                                            "(allowed: optimizer.lr=0.1)")
    assert moved_key(["+sampler.cfg=3", "seed=1"]).endswith("moved to sampler.guidance (allowed: sampler.guidance=3)")
    assert moved_key(["optimizer.lr=0.1", "trainer.max_steps=2"]) is None
    for new in MOVED_KEYS.values():  # every new home exists
        assert OmegaConf.select(compose_cfg([]), new, default="<absent>") != "<absent>", new
    r = run_cli([*tiny(tmp_path), "trainer.lr=0.1"], timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"error: {moved_key(['trainer.lr=0.1'])}"]


@pytest.mark.parametrize("group,key", [("backbone", "depth"), ("trainer", "max_steps"), ("eval", "n_samples")])
def test_a_missing_key_of_the_nodes_schema_is_an_error(group, key):
    """A config that lost a key its schema checks (a hand-written or saved config, not composed onto the schema) is
    refused in one line naming the key; it was skipped before."""
    cfg = OmegaConf.create(OmegaConf.to_container(compose_cfg(["backbone=dit"]), resolve=True))
    del cfg[group][key]
    with pytest.raises(ConfigError, match=rf"{group}\.{key} is missing \(allowed: "):
        preflight(cfg, data=False)
