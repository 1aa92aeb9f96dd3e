# Runs the user's `main` for Millrace: arguments from args.json, result to the result file,
# an exception to the error file. Imports nothing heavy: a job pays only for what it uses
# (`inspect` and `traceback` alone would add ~14 ms to every job's start).
import json
import os
import sys

RESULT_FILE = ".millrace_result.json"
ERROR_FILE = ".millrace_error.json"


def write(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, default=str)


def fail(name, message, stack=None):
    error = {"name": name, "message": message}
    if stack:
        error["stack"] = stack
    write(ERROR_FILE, error)
    sys.exit(1)


def stack():
    import traceback

    return traceback.format_exc()


def parameters(main):
    """The names `main` takes by keyword, those without a default, and whether it takes
    **kwargs."""
    if type(main) is not type(load) or hasattr(main, "__wrapped__"):
        # Methods, callable objects, decorated functions: let `inspect` work it out.
        import inspect

        params = inspect.signature(main).parameters.values()
        named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        required = {p.name for p in params if p.default is p.empty}
        return named, required, any(p.kind == p.VAR_KEYWORD for p in params)
    # A plain function: its code object says the same, without importing anything.
    code = main.__code__
    names = code.co_varnames
    positional = names[: code.co_argcount]
    keyword_only = names[code.co_argcount : code.co_argcount + code.co_kwonlyargcount]
    defaulted = len(main.__defaults__ or ())
    required = set(positional[: len(positional) - defaulted])
    required |= {n for n in keyword_only if n not in (main.__kwdefaults__ or {})}
    named = list(positional[code.co_posonlyargcount :]) + list(keyword_only)
    return named, required, bool(code.co_flags & 0x08)  # CO_VARKEYWORDS


def call_args(main, args):
    """Keeps the arguments `main` names (all of them with **kwargs); fails on missing ones."""
    named, required, var_keyword = parameters(main)
    if var_keyword:
        return args
    missing = [name for name in named if name in required and name not in args]
    if missing:
        fail("MissingArguments", "missing required argument(s): " + ", ".join(missing))
    return {k: v for k, v in args.items() if k in named}


def load():
    """The user's `main`, imported once (a dedicated process calls it for many jobs)."""
    sys.path.insert(0, os.getcwd())
    try:
        import main as user_module
    except BaseException as e:
        fail(type(e).__name__, str(e), stack())
    main = getattr(user_module, "main", None)
    if not callable(main):
        fail("MissingMain", "the script defines no main function")
    return main


def call(main):
    """One job: its arguments from args.json, its result or error to their files."""
    with open("args.json", encoding="utf-8") as f:
        args = json.load(f)
    kwargs = call_args(main, args)
    try:
        result = main(**kwargs)
        # Generators and other iterators stream their chunks.
        if hasattr(result, "__next__") and not isinstance(result, (str, bytes, dict, list)):
            chunks = []
            for chunk in result:
                text = chunk if isinstance(chunk, str) else json.dumps(chunk, default=str)
                chunks.append(text)
                print("\x1eMILLRACE_STREAM" + json.dumps(text), flush=True)
            result = "".join(chunks)
    except SystemExit:
        raise
    except BaseException as e:
        fail(type(e).__name__, str(e), stack())
    sys.stdout.flush()
    write(RESULT_FILE, result)


if __name__ == "__main__":
    call(load())
