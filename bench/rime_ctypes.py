"""librime driven through its C API (``rime_get_api()``) with ctypes: the engine an
IME user already has, as the baseline for the offline convert decoder.

:class:`Rime` sets up a temporary user data directory, uses the shared data in
``/usr/share/rime-data`` (Debian ``rime-data-luna-pinyin``), deploys, opens a session
on ``luna_pinyin`` with the ``simplification`` switch on (simplified characters, as
``luna_pinyin_simp``) and answers :meth:`Rime.candidates`: the first page of the menu
after typing the keys. :func:`rime_unavailable` says why it cannot run, or ``None``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import shutil
import tempfile
from pathlib import Path

__all__ = ["Rime", "rime_unavailable"]

SHARED_DATA = Path("/usr/share/rime-data")
SCHEMA = "luna_pinyin"

Bool = ctypes.c_int
SessionId = ctypes.c_size_t


class _Traits(ctypes.Structure):
    _fields_ = [
        ("data_size", ctypes.c_int),
        ("shared_data_dir", ctypes.c_char_p),
        ("user_data_dir", ctypes.c_char_p),
        ("distribution_name", ctypes.c_char_p),
        ("distribution_code_name", ctypes.c_char_p),
        ("distribution_version", ctypes.c_char_p),
        ("app_name", ctypes.c_char_p),
        ("modules", ctypes.c_void_p),
        ("min_log_level", ctypes.c_int),
        ("log_dir", ctypes.c_char_p),
        ("prebuilt_data_dir", ctypes.c_char_p),
        ("staging_dir", ctypes.c_char_p),
    ]


class _Composition(ctypes.Structure):
    _fields_ = [
        ("length", ctypes.c_int),
        ("cursor_pos", ctypes.c_int),
        ("sel_start", ctypes.c_int),
        ("sel_end", ctypes.c_int),
        ("preedit", ctypes.c_char_p),
    ]


class _Candidate(ctypes.Structure):
    _fields_ = [("text", ctypes.c_char_p), ("comment", ctypes.c_char_p), ("reserved", ctypes.c_void_p)]


class _Menu(ctypes.Structure):
    _fields_ = [
        ("page_size", ctypes.c_int),
        ("page_no", ctypes.c_int),
        ("is_last_page", Bool),
        ("highlighted_candidate_index", ctypes.c_int),
        ("num_candidates", ctypes.c_int),
        ("candidates", ctypes.POINTER(_Candidate)),
        ("select_keys", ctypes.c_char_p),
    ]


class _Context(ctypes.Structure):
    _fields_ = [
        ("data_size", ctypes.c_int),
        ("composition", _Composition),
        ("menu", _Menu),
        ("commit_text_preview", ctypes.c_char_p),
        ("select_labels", ctypes.c_void_p),
    ]


# The RimeApi members in header order, up to the last one used here.
_API_MEMBERS = (
    "setup set_notification_handler initialize finalize start_maintenance is_maintenance_mode "
    "join_maintenance_thread deployer_initialize prebuild deploy deploy_schema deploy_config_file "
    "sync_user_data create_session find_session destroy_session cleanup_stale_sessions "
    "cleanup_all_sessions process_key commit_composition clear_composition get_commit free_commit "
    "get_context free_context get_status free_status set_option get_option set_property get_property "
    "get_schema_list free_schema_list get_current_schema select_schema"
).split()


class _Api(ctypes.Structure):
    _fields_ = [("data_size", ctypes.c_int)] + [(name, ctypes.c_void_p) for name in _API_MEMBERS]


def _fn(api: _Api, name: str, restype: object, *argtypes: object) -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    return ctypes.CFUNCTYPE(restype, *argtypes)(getattr(api, name))  # type: ignore[arg-type]


def _find_library() -> str | None:
    return ctypes.util.find_library("rime")


def rime_unavailable() -> str | None:
    """Why librime cannot be driven here (``None`` if it can)."""
    if _find_library() is None:
        return "librime not found (Debian: apt-get install librime1 librime-dev)"
    if not (SHARED_DATA / f"{SCHEMA}.schema.yaml").exists():
        return f"{SHARED_DATA}/{SCHEMA}.schema.yaml missing (Debian: apt-get install rime-data-luna-pinyin)"
    return None


class Rime:
    """One librime session on ``luna_pinyin`` (simplified). Use as a context manager;
    librime is process-global, so at most one :class:`Rime` per process."""

    def __init__(self) -> None:
        reason = rime_unavailable()
        if reason:
            raise RuntimeError(reason)
        self._lib = ctypes.CDLL(_find_library())
        self._lib.rime_get_api.restype = ctypes.POINTER(_Api)
        api = self._lib.rime_get_api().contents
        self._user_dir = tempfile.mkdtemp(prefix="switchyard-rime-")
        self._traits = _Traits()
        self._traits.data_size = ctypes.sizeof(_Traits) - ctypes.sizeof(ctypes.c_int)
        self._traits.shared_data_dir = str(SHARED_DATA).encode()
        self._traits.user_data_dir = self._user_dir.encode()
        self._traits.distribution_name = b"switchyard-bench"
        self._traits.distribution_code_name = b"switchyard-bench"
        self._traits.distribution_version = b"1"
        self._traits.app_name = b"rime.switchyard-bench"
        self._traits.min_log_level = 3
        self._traits.log_dir = self._user_dir.encode()
        traits = ctypes.byref(self._traits)
        _fn(api, "setup", None, ctypes.c_void_p)(traits)
        _fn(api, "initialize", None, ctypes.c_void_p)(traits)
        if _fn(api, "start_maintenance", Bool, Bool)(True):
            _fn(api, "join_maintenance_thread", None)()
        self._create = _fn(api, "create_session", SessionId)
        self._destroy = _fn(api, "destroy_session", Bool, SessionId)
        self._finalize = _fn(api, "finalize", None)
        self._process_key = _fn(api, "process_key", Bool, SessionId, ctypes.c_int, ctypes.c_int)
        self._clear = _fn(api, "clear_composition", None, SessionId)
        self._get_context = _fn(api, "get_context", Bool, SessionId, ctypes.POINTER(_Context))
        self._free_context = _fn(api, "free_context", Bool, ctypes.POINTER(_Context))
        set_option = _fn(api, "set_option", None, SessionId, ctypes.c_char_p, Bool)
        select_schema = _fn(api, "select_schema", Bool, SessionId, ctypes.c_char_p)
        self._session = self._create()
        if not self._session or not select_schema(self._session, SCHEMA.encode()):
            self.close()
            raise RuntimeError(f"librime could not open a session on {SCHEMA}")
        set_option(self._session, b"simplification", True)

    def candidates(self, keys: str) -> list[str]:
        """The first menu page (luna_pinyin shows 5) after typing ``keys`` (ASCII)."""
        self._clear(self._session)
        for ch in keys:
            self._process_key(self._session, ord(ch), 0)
        context = _Context()
        context.data_size = ctypes.sizeof(_Context) - ctypes.sizeof(ctypes.c_int)
        out: list[str] = []
        if self._get_context(self._session, ctypes.byref(context)):
            menu = context.menu
            out = [menu.candidates[i].text.decode("utf-8") for i in range(menu.num_candidates)]
            self._free_context(ctypes.byref(context))
        self._clear(self._session)
        return out

    def close(self) -> None:
        if getattr(self, "_session", 0):
            self._destroy(self._session)
            self._session = 0
        self._finalize()
        shutil.rmtree(self._user_dir, ignore_errors=True)

    def __enter__(self) -> Rime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    with Rime() as rime:
        for keys in ("nihaoshijie", "woaibeijingtiananmen", "xian", "lvse", "jintiantianqihenhao"):
            print(keys, rime.candidates(keys))
