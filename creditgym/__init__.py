"""creditgym: gym-style environments for agentic RL with built-in credit assignment."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("creditgym")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from creditgym import envs as envs  # noqa: E402  (registers every env)
from creditgym.vector import make_vec as make_vec  # noqa: E402
