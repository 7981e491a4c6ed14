# Prints the prelude's code object, marshalled, as hex, compiled by the runtime's own CPython
# (once per process, for runs without a snapshot). toolhost appends one call with the
# parameters as one JSON value: {"source": the prelude}.
def __toolhost_compile_prelude(params):
    import marshal, sys

    sys.stdout.write(marshal.dumps(compile(params["source"], "<toolhost>", "exec", optimize=2)).hex())
    sys.stdout.flush()
