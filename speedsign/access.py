"""Who may write, and where on the server the app may look: owner or public mode, the owner's
password, the allowed roots for typed server paths, and the quota settings.

A shared app (Streamlit Community Cloud) runs in public mode: visitors explore, evaluate and
classify; training, cancelling, rendering, imports, zip uploads, server folders and weights
files on the server ask for the owner's password. Local `streamlit run` is owner mode, the
default when nothing is set. An unknown mode fails closed: public, with a message saying why.

Settings come from the environment (SPEEDSIGN_*) and the `[speedsign]` table of Streamlit's
secrets (`.streamlit/secrets.toml`, or a Community Cloud app's secrets). Plain functions over
those two mappings: no Streamlit here (speedsign.ui reads st.secrets and keeps the session's
unlock). The command line is the owner's own shell: nothing here applies to it.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speedsign.errors import UserError
from speedsign.storage import default_data_dir, default_runs_dir

OWNER = "owner"
PUBLIC = "public"
MODES = (OWNER, PUBLIC)
SECRETS_SECTION = "speedsign"

MODE_ENV = "SPEEDSIGN_MODE"
PASSWORD_ENV = "SPEEDSIGN_PASSWORD"
ALLOWED_PATHS_ENV = "SPEEDSIGN_ALLOWED_PATHS"
MAX_JOBS_ENV = "SPEEDSIGN_MAX_JOBS"
SESSION_JOBS_ENV = "SPEEDSIGN_SESSION_JOBS"
DISK_BUDGET_ENV = "SPEEDSIGN_DISK_BUDGET_MB"

DEFAULT_MAX_JOBS = 4  # queued + running jobs in the runs folder, from every session
DEFAULT_SESSION_JOBS = 1  # a session launches only while fewer of its jobs than this are active
DEFAULT_DISK_BUDGET_MB = 2000.0  # data/ and runs/ together

_TOKEN_KEY = b"speedsign-owner-unlock"


@dataclass(frozen=True)
class Settings:
    """Access and quota settings, read once per script run (`load_settings`)."""

    mode: str = OWNER
    password: str = field(default="", repr=False)  # the owner's; "" when none is set (nothing unlocks)
    allowed_paths: tuple[Path, ...] = ()  # roots beside data/ and runs/ that typed server paths may use
    max_jobs: int = DEFAULT_MAX_JOBS
    session_jobs: int = DEFAULT_SESSION_JOBS
    disk_budget_mb: float = DEFAULT_DISK_BUDGET_MB
    problems: tuple[str, ...] = ()  # settings that were refused, and what was used instead

    @property
    def public(self) -> bool:
        return self.mode != OWNER

    @property
    def has_password(self) -> bool:
        return bool(self.password)

    def can_write(self, token: object = None) -> bool:
        """Owner mode, or public mode unlocked by this session's token (`unlock_token`)."""
        return not self.public or is_unlocked(self, token)

    @property
    def disk_budget_bytes(self) -> int:
        return int(self.disk_budget_mb * 1024 * 1024)


# ---------------------------------------------------------------- reading the settings

def secrets_section(secrets: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The `[speedsign]` table of the secrets ({} when absent or not a table)."""
    section = (secrets or {}).get(SECRETS_SECTION)
    return section if isinstance(section, Mapping) else {}


def load_settings(environ: Mapping[str, str] | None = None, secrets: Mapping[str, Any] | None = None,
                  *, secrets_problem: str | None = None) -> Settings:
    """Settings from the environment and the secrets' `[speedsign]` table.

    The environment wins for numbers and the password; for the mode the stricter source wins
    (public when either says public or anything else than "owner"). `secrets_problem`: why the
    secrets could not be read (a file that does not parse): the app then runs in public mode.
    """
    environ = os.environ if environ is None else environ
    section = secrets_section(secrets)
    problems: list[str] = []
    mode = _mode(environ, section, problems)
    if secrets_problem:
        mode = PUBLIC
        problems.append(f"the secrets could not be read ({secrets_problem}): the app runs in public mode")
    password = _text(environ.get(PASSWORD_ENV)) or _text(section.get("password"))
    return Settings(
        mode=mode,
        password=password,
        allowed_paths=_allowed_paths(environ.get(ALLOWED_PATHS_ENV), section.get("allowed_paths")),
        max_jobs=int(_number(environ, section, MAX_JOBS_ENV, "max_jobs", DEFAULT_MAX_JOBS, problems, whole=True)),
        session_jobs=int(_number(environ, section, SESSION_JOBS_ENV, "session_jobs", DEFAULT_SESSION_JOBS,
                                 problems, whole=True)),
        disk_budget_mb=float(_number(environ, section, DISK_BUDGET_ENV, "disk_budget_mb", DEFAULT_DISK_BUDGET_MB,
                                     problems)),
        problems=tuple(problems),
    )


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _mode(environ: Mapping[str, str], section: Mapping[str, Any], problems: list[str]) -> str:
    modes = []
    for name, raw in ((MODE_ENV, environ.get(MODE_ENV)), ('mode in [speedsign] of the secrets', section.get("mode"))):
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            continue
        value = raw.strip().lower() if isinstance(raw, str) else raw
        if value not in MODES:
            problems.append(f"{name} is {str(raw)[:40]!r}, not \"owner\" or \"public\": the app runs in public mode")
            value = PUBLIC
        modes.append(value)
    return PUBLIC if PUBLIC in modes else OWNER


def _number(environ: Mapping[str, str], section: Mapping[str, Any], env_name: str, key: str, default: float,
            problems: list[str], *, whole: bool = False) -> float:
    for name, raw in ((env_name, environ.get(env_name)), (f"{key} in [speedsign] of the secrets", section.get(key))):
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            continue
        try:
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value) or value < 0 or (whole and not value.is_integer()):
            kind = "a whole number" if whole else "a number"
            problems.append(f"{name} is {str(raw)[:40]!r}, not {kind} of at least 0: using {default:g}")
            return default
        return value
    return default


def _allowed_paths(env_value: str | None, secrets_value: Any) -> tuple[Path, ...]:
    texts: list[str] = []
    if isinstance(env_value, str):
        texts += env_value.split(os.pathsep)
    if isinstance(secrets_value, str):
        texts += secrets_value.split(os.pathsep)
    elif isinstance(secrets_value, (list, tuple)):
        texts += [item for item in secrets_value if isinstance(item, str)]
    return tuple(Path(os.path.expanduser(text.strip())) for text in texts if text.strip())


# ---------------------------------------------------------------- the owner's password

def check_password(settings: Settings, given: object) -> bool:
    """Whether `given` is the owner's password (constant time; never true without a password set)."""
    if not settings.password or not isinstance(given, str) or not given:
        return False
    return hmac.compare_digest(given.encode("utf-8"), settings.password.encode("utf-8"))


def unlock_token(settings: Settings) -> str:
    """What an unlocked session keeps: derived from the password, so changing it locks every session."""
    return hmac.new(_TOKEN_KEY, settings.password.encode("utf-8"), hashlib.sha256).hexdigest()


def is_unlocked(settings: Settings, token: object) -> bool:
    """Whether a session's token unlocks writing (a password must be set)."""
    if not settings.password or not isinstance(token, str):
        return False
    return hmac.compare_digest(token.encode("utf-8"), unlock_token(settings).encode("utf-8"))


# ---------------------------------------------------------------- server paths

def allowed_roots(settings: Settings) -> tuple[Path, ...]:
    """Where typed server paths may point: the data folder, the runs folder and the allow-list,
    resolved (each once)."""
    roots: list[Path] = []
    for root in (default_data_dir(), default_runs_dir(), *settings.allowed_paths):
        try:
            resolved = Path(root).expanduser().resolve()
        except (OSError, RuntimeError):
            continue
        if resolved not in roots:
            roots.append(resolved)
    return tuple(roots)


def describe_roots(roots: Iterable[Path]) -> str:
    return ", ".join(str(root) for root in roots) or "none"


def is_inside(path: Path | str, roots: Iterable[Path]) -> bool:
    """Whether `path`, resolved (links and .. followed), lies in one of `roots`."""
    try:
        confine(path, roots)
    except UserError:
        return False
    return True


def confine(path: Path | str, roots: Iterable[Path]) -> Path:
    """`path` resolved (~, links and .. followed), if it lies inside one of `roots`; else UserError
    naming the allowed roots. Resolve first, then check: a link or `..` cannot leave a root."""
    roots = tuple(roots)
    text = str(path).strip()
    if not text:
        raise UserError("type a path on the server")
    if "\x00" in text:
        raise UserError("a path cannot hold a NUL character")
    try:
        resolved = Path(os.path.expanduser(text)).resolve()
    except (OSError, RuntimeError) as error:  # a loop of links
        raise UserError(f"{text}: cannot be resolved ({error})") from None
    for root in roots:
        try:
            root_resolved = Path(root).resolve()
        except (OSError, RuntimeError):
            continue
        if resolved.is_relative_to(root_resolved):
            return resolved
    raise UserError(f"{text} is outside the folders this app may read ({describe_roots(roots)}). The data and "
                    f"runs folders are allowed; the owner can add folders with {ALLOWED_PATHS_ENV} or "
                    f"allowed_paths in the [speedsign] secrets.")
