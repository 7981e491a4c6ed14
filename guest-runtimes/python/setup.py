# The first turn of a reactor call when the instance has no prelude yet (a run without a
# snapshot, or the snapshot build): installs the prelude as the module `_toolhost`, from its
# source or from its code object marshalled as hex, then calls its `begin` with the call's
# environment and argv. toolhost appends one call with the parameters as one JSON value:
# {"source": str} or {"marshalled": hex}, and "env", "argv". Binds no name in the user's
# globals (the turn deletes the function after the call).
def __toolhost_setup(params):
    import sys

    module = sys.modules.get("_toolhost")
    if module is None:
        module = type(sys)("_toolhost")
        if "marshalled" in params:
            import marshal

            exec(marshal.loads(bytes.fromhex(params["marshalled"])), module.__dict__)
        else:
            exec(compile(params["source"], "<toolhost>", "exec"), module.__dict__)
        sys.modules["_toolhost"] = module
    module.begin(params["env"], params["argv"])
