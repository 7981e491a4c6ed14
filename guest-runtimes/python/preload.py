# The turn a snapshot is taken after (following the setup turn, which installs the prelude):
# imports the preload, warms what calls use first, leaves nothing buffered, and refuses to
# leave a file open: a file descriptor frozen into a snapshot would name nothing (or something
# else) in a later call. toolhost appends one call with the parameters as one JSON value:
# {"modules": [names], "first_free": the first descriptor after the preopened folders}.
def __toolhost_preload(params):
    import gc, importlib, os, sys

    for name in params["modules"]:
        importlib.import_module(name)
    # Warm up what calls use first, so that its one-time setup is in the snapshot.
    np = sys.modules.get("numpy")
    if np is not None:
        repr(np.arange(10).reshape(2, 5).sum(axis=0) / 3)
    pd = sys.modules.get("pandas")
    if pd is not None:
        frame = pd.DataFrame({"a": range(3), "b": list("xyz")})
        repr(frame); repr(frame.describe()); frame.a.mean(); frame.to_csv()
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        import io

        figure, axes = plt.subplots()
        axes.plot([0, 1, 2], [0, 1, 4], label="warm-up")
        axes.set_title("warm-up"); axes.set_xlabel("x"); axes.legend()
        figure.savefig(io.BytesIO(), format="png")
        plt.close("all")
    gc.collect()
    # Collections in a call would otherwise write to every object's header, copying the
    # snapshot's pages; the frozen generation is never scanned.
    gc.freeze()
    sys.stdout.flush()
    sys.stderr.flush()

    first_free = params["first_free"]

    def still_open():
        found = []
        for fd in range(first_free, first_free + 256):
            try:
                os.fstat(fd)
                found.append(fd)
            except OSError:
                pass
        return found

    # A loaded font may keep its file open (the prelude reads fonts into memory; if that did
    # not take, drop the cached fonts), and no descriptor may be frozen.
    font_manager = sys.modules.get("matplotlib.font_manager")
    if still_open() and font_manager is not None:
        font_manager._get_font.cache_clear()
        gc.collect()
    if still_open():
        raise RuntimeError(f"the preload left file descriptors open: {still_open()}")
