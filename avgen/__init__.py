"""avgen: visually indicated sound generation with a plugin system.

Everything a plugin needs is importable from here (``from avgen import Generator, BuildContext``);
the modules behind these names are private. Names that need torch load on first use, so
``import avgen`` (and ``avgen --help``) stays light.
"""

__version__ = "0.1.0"

from importlib import import_module  # noqa: E402
from typing import Any  # noqa: E402

from avgen._core.card import KINDS, Card  # noqa: E402
from avgen._core.errors import AvgenError, RunLockedError, UnknownComponentError  # noqa: E402
from avgen._core.hookspecs import hookimpl  # noqa: E402
from avgen._core.plugins import broken_plugins, component_source, create, get_component, list_components  # noqa: E402
from avgen._core.registry import Component, format_validation_error  # noqa: E402

# public name -> the private module that defines it, imported on first access
_LAZY = {
    **dict.fromkeys(("BuildContext", "Clip", "Dataset", "Detector", "Encoder", "EvalContext", "ExemplarBank", "TuneData",
                     "Generator", "GeneratorShape", "Index", "Loss", "Metric", "Representation", "SavedModel",
                     "check_contract"), "avgen._core.components"),
    **dict.fromkeys(("FrameReader", "MEDIA_VERSION", "probe", "read_frames"), "avgen._core.media"),
    **dict.fromkeys(("read_audio", "resample", "write_wav"), "avgen._core.sound"),
    **dict.fromkeys(("mux_audio", "write_video"), "avgen._core.mux"),
    **dict.fromkeys(("clip_seconds", "load_trained", "saved_model_of_run"), "avgen._core.loading"),
    **dict.fromkeys(("generate_for_video", "video_features"), "avgen._core.videosound"),
    **dict.fromkeys(("SoundModel", "load"), "avgen._core.model"),
    "kept_detector": "avgen._core.events",
    "build_dataset": "avgen._core.build",
    **dict.fromkeys(("path_params", "validate_recipe"), "avgen._core.recipe"),
    "resolve_device": "avgen._core.distributed",
    "RunDir": "avgen._core.rundir",
    **dict.fromkeys(("atomic_path", "folder_error", "folder_mode", "signals_deferred", "staging_folder", "write_json",
                     "write_text"), "avgen._core.atomic"),
    **dict.fromkeys(("check_outputs", "check_writable", "named_as"), "avgen._core.outputs"),
    **dict.fromkeys(("cache_dir", "weights_dir"), "avgen._core.paths"),
    **dict.fromkeys(("cache_key", "make_each", "make_once"), "avgen._core.cache"),
    "make_console": "avgen._core.console",
    **dict.fromkeys(("PrecisionChoice", "autocast_for", "choose_precision", "native_bf16"), "avgen._core.precision"),
    "replicate_to_steps": "avgen._core.sequence",
    **dict.fromkeys(("fixed_order_sum", "time_average"), "avgen._core.retrieval"),
    **dict.fromkeys(("RunContents", "RunSection", "RunSummary", "is_untrained", "read_json", "read_recipe", "run_name",
                     "run_sections", "write_report"), "avgen._core.report"),
}

__all__ = ["KINDS", "AvgenError", "Card", "Component", "RunLockedError", "UnknownComponentError", "__version__",
           "broken_plugins", "component_source", "create",
           "format_validation_error", "get_component", "hookimpl", "list_components"]
__all__ += sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'avgen' has no attribute {name!r}")
