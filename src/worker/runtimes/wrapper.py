# Runs the user's `main` for Millrace: arguments from args.json, result to the result file,
# an exception to the error file. Imports nothing heavy: a job pays only for what it uses.
import inspect
import json
import os
import sys
import traceback

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


def call_args(main, args):
    """Keeps the arguments `main` names (all of them with **kwargs); fails on missing ones."""
    params = inspect.signature(main).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return args
    named = {
        p.name: p
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    missing = [
        name for name, p in named.items() if p.default is p.empty and name not in args
    ]
    if missing:
        fail("MissingArguments", "missing required argument(s): " + ", ".join(missing))
    return {k: v for k, v in args.items() if k in named}


def run():
    sys.path.insert(0, os.getcwd())
    with open("args.json", encoding="utf-8") as f:
        args = json.load(f)
    try:
        import main as user_module
    except BaseException as e:
        fail(type(e).__name__, str(e), traceback.format_exc())
    main = getattr(user_module, "main", None)
    if not callable(main):
        fail("MissingMain", "the script defines no main function")
    kwargs = call_args(main, args)
    try:
        result = main(**kwargs)
        if inspect.isgenerator(result) or (
            hasattr(result, "__next__") and not isinstance(result, (str, bytes, dict, list))
        ):
            chunks = []
            for chunk in result:
                text = chunk if isinstance(chunk, str) else json.dumps(chunk, default=str)
                chunks.append(text)
                print("\x1eMILLRACE_STREAM" + json.dumps(text), flush=True)
            result = "".join(chunks)
    except SystemExit:
        raise
    except BaseException as e:
        fail(type(e).__name__, str(e), traceback.format_exc())
    sys.stdout.flush()
    write(RESULT_FILE, result)


run()
