"""cachekit: planned, pluggable feature caching for video diffusion transformers."""

from .adapter import Adapter, find_adapter
from .api import Session, disable, enable, enabled
from .calibration import calibrate
from .config import CacheConfig, dump_config, load_config
from .errors import AdapterError, CachekitError, ConfigError, EnableError, PlanError, RegistryError
from .plan import StepPlan
from .planner import build_plan
from .policy import Action, OnlineContext, OnlinePolicy, Policy, Ref, RunInfo, Window
from .registry import hookimpl, register_adapter, register_kernel, register_policy, registry
from .registry import reload as reload_plugins
from .sites import Selector, Site
from .tuning import tune
from . import zoo  # light: the model loads on zoo.load(...), as README writes it

__all__ = [
    "Action", "Adapter", "AdapterError", "CacheConfig", "CachekitError", "ConfigError", "EnableError", "OnlineContext", "OnlinePolicy",
    "PlanError", "Policy", "Ref", "RegistryError", "RunInfo", "Selector", "Session", "Site", "StepPlan", "Window", "build_plan",
    "calibrate", "disable", "dump_config", "enable", "enabled", "find_adapter", "hookimpl", "load_config", "register_adapter",
    "register_kernel", "register_policy", "registry", "reload_plugins", "tune", "zoo",
]
__version__ = "0.1.0"
