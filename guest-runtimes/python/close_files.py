# Run after a call whose Python state is kept, when the code left files open: their
# descriptors are this call's and mean nothing (or another file) in the next. Closes every
# file object on those descriptors, text wrappers before buffers before raw files so that what
# they buffered is flushed, then the descriptors. toolhost appends one call with the list of
# descriptors.
def __toolhost_close_files(fds):
    import gc, io, os

    fds = set(fds)
    found = []
    for obj in gc.get_objects():
        if isinstance(obj, io.IOBase):
            try:
                if not obj.closed and obj.fileno() in fds:
                    found.append(obj)
            except Exception:
                pass
    layers = (io.TextIOBase, io.BufferedIOBase, io.IOBase)
    for layer in layers:
        for obj in found:
            if isinstance(obj, layer):
                try:
                    obj.close()
                except Exception:
                    pass
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
