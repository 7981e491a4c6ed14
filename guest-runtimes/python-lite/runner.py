# toolhost's runner for command runtimes (`python -c RUNNER PRELUDE SETUP CODE`): installs the
# prelude as the module `_toolhost`, calls its `begin`, then runs CODE as a notebook cell: a
# final expression is echoed with its repr, and a traceback shows only the user's frames, in a
# file named <code>.
import sys


def __toolhost_main():
    import ast
    import json
    import types

    prelude, setup, code = sys.argv[1:4]
    module = types.ModuleType("_toolhost")
    exec(compile(prelude, "<toolhost>", "exec"), module.__dict__)
    sys.modules["_toolhost"] = module
    config = json.loads(setup)
    module.begin(config["env"], config["argv"])

    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        tree = ast.parse(code, "<code>", "exec")
        last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        if last is not None:
            tree.body.pop()
        exec(compile(tree, "<code>", "exec"), namespace)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), "<code>", "eval"), namespace)
            if value is not None:
                print(repr(value))
    except SystemExit:
        raise
    except BaseException as error:
        import traceback

        frames = error.__traceback__
        while frames is not None and frames.tb_frame.f_code.co_filename != "<code>":
            frames = frames.tb_next
        traceback.print_exception(type(error), error, frames)
        sys.stdout.flush()
        sys.exit(1)
    finally:
        module.end()
        sys.stdout.flush()


__toolhost_main()
