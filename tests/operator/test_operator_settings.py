"""Operator settings from the environment and flags, and which namespaces a scoped operator resyncs."""

from frontier_operator import handlers, main, settings


def test_environment_sets_images_and_commands():
    cfg = settings.from_env(
        {
            "FRONTIER_ENGINE_IMAGE": "frontier:dev",
            "FRONTIER_ENGINE_COMMAND": "frontier-sim serve",
            "FRONTIER_PICKER_REPLICAS": "2",
            "FRONTIER_RESYNC_SECONDS": "30",
            "FRONTIER_ACCELERATOR_LABEL": "nvidia.com/gpu.product",
        }
    )
    assert cfg.accelerator_label == "nvidia.com/gpu.product"
    assert cfg.engine_image == "frontier:dev"
    assert cfg.engine_command == ("frontier-sim", "serve")
    assert cfg.picker_replicas == 2
    assert cfg.resync_seconds == 30.0
    assert settings.from_env({}) == settings.Settings()


def test_flags_override_the_environment(monkeypatch):
    monkeypatch.setenv("FRONTIER_ENGINE_IMAGE", "from-env")
    args = main.parser().parse_args(["--engine-image", "from-flag", "--engine-command", "frontier-sim serve"])
    cfg = main.settings_from(args)
    assert (cfg.engine_image, cfg.engine_command) == ("from-flag", ("frontier-sim", "serve"))
    args = main.parser().parse_args(["--accelerator-label", "nvidia.com/gpu.product"])
    assert main.settings_from(args).accelerator_label == "nvidia.com/gpu.product"


def test_scoped_operator_resyncs_only_its_namespaces():
    assert handlers.watched("team-a", [])
    assert handlers.watched("op-bench-1a2b3c", ["op-*"])
    assert not handlers.watched("kube-system", ["op-*", "team-a"])
