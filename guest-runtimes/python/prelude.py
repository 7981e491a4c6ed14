# toolhost's guest prelude. It is executed as the module `_toolhost` in every fresh instance,
# before the user's code, and defines `begin`, which the host calls once per call with that
# call's environment. The user's globals are left untouched.
#
# What it sets up:
# - matplotlib draws with the Agg backend into a writable config folder, and `plt.show()`
#   saves every open figure as a PNG in /workspace/outputs/ (then closes it), so plots reach
#   the caller as workspace files; `end()` saves figures the code left open.
# - numpy scalars echo as `3`, not `np.int64(3)` (numpy's own `legacy="1.25"` print option,
#   scalars only; `np.set_printoptions(legacy=False)` undoes it).
# - the current directory is /workspace, so relative paths land in the workspace.
# - state a snapshot could have frozen is renewed per call: os.environ, sys.argv, the random
#   generators of `random` and `numpy.random`, tempfile's cached folder and name generator.

import os as _os
import sys as _sys

OUTPUTS = "/workspace/outputs"


def _next_free(stem, suffix):
    """Opens a new file OUTPUTS/<stem>-<n><suffix> exclusively, so concurrent calls of one
    session never overwrite each other's figures."""
    _os.makedirs(OUTPUTS, exist_ok=True)
    n = 1
    while True:
        path = f"{OUTPUTS}/{stem}-{n}{suffix}"
        try:
            return path, open(path, "xb")
        except FileExistsError:
            n += 1


def save_open_figures():
    """Saves each open matplotlib figure as a PNG and closes it; returns the paths."""
    plt = _sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return []
    saved = []
    for number in plt.get_fignums():
        figure = plt.figure(number)
        path, handle = _next_free("figure", ".png")
        with handle:
            figure.savefig(handle, format="png")
        saved.append(path)
        plt.close(figure)
    return saved


def _show(*args, **kwargs):
    """toolhost: saves each open figure as a PNG in /workspace/outputs/ and closes it."""
    save_open_figures()


def _patch_pyplot(pyplot):
    pyplot.show = _show


def _patch_numpy(numpy):
    numpy.set_printoptions(legacy="1.25")


_FONT_BYTES = {}


def _font_stream(path):
    """The font file at `path`, read into memory once, as a fresh stream that stands for its
    path: matplotlib records a font's file (`FT2Font.fname`, the stream) by its string, and
    later hands that to `get_font` and to the PDF/PS subsetter."""
    import io

    class FontStream(io.BytesIO):
        def __str__(self):
            return self.font_path

        __repr__ = __str__

    path = _os.fsdecode(path)
    if path not in _FONT_BYTES:
        with open(path, "rb") as handle:
            _FONT_BYTES[path] = handle.read()
    stream = FontStream(_FONT_BYTES[path])
    stream.font_path = path
    return stream


def _font_path(value):
    """A font argument with in-memory font streams replaced by their paths."""
    path = getattr(value, "font_path", None)
    if path is not None:
        return path
    if isinstance(value, (list, tuple)):
        return type(value)(_font_path(v) for v in value)
    return value


def _patch_font_manager(font_manager):
    """Fonts are read into memory instead of being kept open as files. FreeType reads a font
    lazily, so matplotlib keeps each loaded font's file open; a snapshot must not hold an open
    file, and a font loaded (and its glyphs rendered) before the snapshot saves every call
    tens of milliseconds."""
    import functools
    import types

    real = font_manager.ft2font

    class _InMemory(type):
        def __call__(cls, filename, *args, **kwargs):
            filename = _font_path(filename)
            if isinstance(filename, (str, bytes, _os.PathLike)):
                filename = _font_stream(filename)
            return real.FT2Font(filename, *args, **kwargs)

        def __instancecheck__(cls, instance):
            return isinstance(instance, real.FT2Font)

    view = types.ModuleType(real.__name__)
    view.__dict__.update(real.__dict__)
    view.FT2Font = _InMemory("FT2Font", (), {"__doc__": real.FT2Font.__doc__})
    font_manager.ft2font = view

    real_get_font = font_manager.get_font

    @functools.wraps(real_get_font)
    def get_font(font_filepaths, *args, **kwargs):
        return real_get_font(_font_path(font_filepaths), *args, **kwargs)

    font_manager.get_font = get_font


# Modules patched as they are first imported (or at once, when a snapshot already holds them).
_PATCHES = {
    "matplotlib.pyplot": _patch_pyplot,
    "numpy": _patch_numpy,
    "matplotlib.font_manager": _patch_font_manager,
}


class _PatchingLoader:
    """Runs the real loader, then patches the module it loaded."""

    def __init__(self, inner, patch):
        self._inner = inner
        self._patch = patch

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        self._patch(module)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _PatchHook:
    """A meta path finder that patches the modules of `_PATCHES` as they are first imported."""

    def find_spec(self, name, path=None, target=None):
        patch = _PATCHES.get(name)
        if patch is None:
            return None
        for finder in _sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _PatchingLoader(spec.loader, patch)
                return spec
        return None


def _install():
    for name, patch in _PATCHES.items():
        if name in _sys.modules:
            patch(_sys.modules[name])
    if not any(isinstance(f, _PatchHook) for f in _sys.meta_path):
        _sys.meta_path.insert(0, _PatchHook())


def begin(env, argv):
    """Called once per call, before the user's code, with that call's environment."""
    _os.environ.clear()
    _os.environ.update(env)
    _sys.argv[:] = argv
    _os.makedirs(env.get("MPLCONFIGDIR", "/tmp/matplotlib"), exist_ok=True)
    _os.chdir("/workspace")
    random = _sys.modules.get("random")
    if random is not None:
        random.seed()
    np_random = _sys.modules.get("numpy.random")
    if np_random is not None:
        # A full MT19937 state from the host's entropy: as fresh as seed(), a third the cost.
        numpy = _sys.modules["numpy"]
        state = numpy.frombuffer(_os.urandom(624 * 4), dtype=numpy.uint32)
        np_random.set_state(("MT19937", state, 624, 0, 0.0))
    tempfile = _sys.modules.get("tempfile")
    if tempfile is not None:
        tempfile.tempdir = None
        tempfile._name_sequence = None  # its own Random, seeded when the snapshot was taken
    plt = _sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close("all")


def end():
    """Called after the user's code: figures left open are saved like a notebook shows them,
    and what the code wrote is flushed."""
    try:
        save_open_figures()
    finally:
        _sys.stdout.flush()
        _sys.stderr.flush()


_install()
