r"""How every entry point reports a user's mistake: `error: <one line>` on stderr, exit status 2.

Why one place: a wrong flag, path or config argument is the user's to fix, and a traceback buries
the line that says what to fix. Internal bugs keep their tracebacks: only `UserError` (raised
directly, or converted from ValueError / file errors inside a `user_input()` block that only
checks what the user gave) is shortened.

  argparse CLIs:  p = cli.ArgumentParser(...)       # argparse's own errors become UserError
                  @cli.entry_point                  # main(argv) -> 2 on a UserError
                  def main(argv=None) -> int: ...
                  if __name__ == "__main__": sys.exit(main())
  absl CLIs:      if __name__ == "__main__": cli.run_absl(main, config_flag="config")

`run_absl` loads the `--config path.py[:arg]` file itself before absl parses any flag, so a
missing file, a bad config argument (`configs/common.parse_arg`) or a misspelt
`--config.a.b=...` override is reported before jax, TensorFlow or any device is touched. This
module imports only the standard library and absl.
"""
import argparse
import contextlib
import difflib
import functools
import importlib.util
import os
import re
import sys
from typing import Any, Callable, Optional, Sequence

EXIT_USER_ERROR = 2
# What a `user_input()` block converts by default: the errors a check of a flag or a path raises.
USER_INPUT_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
                     IsADirectoryError, PermissionError)


class UserError(ValueError):
  """A mistake in what the user gave (flag, path, config argument): one line, exit 2.

  A ValueError, so library callers and tests that catch ValueError keep working.
  """


def one_line(message: Any) -> str:
  """Joins a multi-line message into one line (`; ` between its non-empty lines)."""
  return "; ".join(s.strip() for s in str(message).splitlines() if s.strip())


def report(error: BaseException, stream=None) -> int:
  """Prints `error: <message>` (one line) and returns the exit status for user errors."""
  print(f"error: {one_line(error)}", file=sys.stderr if stream is None else stream, flush=True)
  return EXIT_USER_ERROR


@contextlib.contextmanager
def user_input(*kinds: type):
  """Inside: the listed errors (default USER_INPUT_ERRORS) are the user's, raised as UserError.

  Use around code that only reads and checks what the user named (a workdir, a file, option
  combinations), never around the work itself, so a bug there still shows its traceback.
  """
  try:
    yield
  except UserError:
    raise
  except (kinds or USER_INPUT_ERRORS) as e:
    raise UserError(one_line(e)) from e


def entry_point(main: Callable[..., int]) -> Callable[..., int]:
  """Decorates `main(argv=None) -> int`: a UserError prints one line and returns 2."""
  @functools.wraps(main)
  def wrapper(argv: Optional[Sequence[str]] = None) -> int:
    try:
      return main(argv)
    except UserError as e:
      return report(e)
  return wrapper


def existing_file(path: str, flag: str) -> str:
  """`path` when it is a file (local or a URL such as gs://); else UserError naming the flag."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  if not epath.Path(path).is_file():
    raise UserError(f"{flag}={path!r}: no such file")
  return path


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose usage errors (missing / unknown / mistyped arguments) raise UserError."""

  def error(self, message):
    raise UserError(message)


# ----- absl + ml_collections config files --------------------------------------------------------
def close_matches(word: str, candidates, n: int = 3) -> list[str]:
  return difflib.get_close_matches(word, sorted(set(candidates)), n=n, cutoff=0.6)


def _flag_value(argv: Sequence[str], name: str) -> Optional[str]:
  """The value of `--name=v` / `--name v` (absl also accepts one dash); the last one wins."""
  value = None
  for i, arg in enumerate(argv):
    m = re.match(rf"^--?{re.escape(name)}(=(.*))?$", arg)
    if m:
      value = m.group(2) if m.group(1) else (argv[i + 1] if i + 1 < len(argv) else "")
  return value


def _importable_config_package(path: str):
  """Lets a config in a `configs/` package import its siblings (`from configs import common`)
  when the command runs from another directory: the package's parent goes on sys.path."""
  folder = os.path.dirname(os.path.abspath(path))
  root = os.path.dirname(folder)
  if (os.path.basename(folder) == "configs" and os.path.isfile(os.path.join(folder, "__init__.py"))
      and root not in sys.path):
    sys.path.append(root)


def load_config_file(value: str, flag: str = "config"):
  """Loads `path.py[:arg]` as ml_collections' config flag does; user mistakes raise UserError."""
  path, colon, arg = value.partition(":")
  if not path:
    raise UserError(f"--{flag}: empty path; expected --{flag}=path/to/config.py[:args]")
  # Config files are Python modules imported from the local disk (ml_collections does the same).
  if not os.path.isfile(path):
    folder = os.path.dirname(path) or "."
    near = close_matches(os.path.basename(path), os.listdir(folder)) if os.path.isdir(
        folder) else []
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    raise UserError(f"--{flag}: no such config file: {path}{hint}")
  _importable_config_package(path)
  spec = importlib.util.spec_from_file_location(f"_maskvq_{flag}_precheck", path)
  if spec is None or spec.loader is None:
    raise UserError(f"--{flag}: {path} is not a Python config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise UserError(f"--{flag}: {path} defines no get_config()")
  return module.get_config(arg) if colon else module.get_config()


def _leaf_paths(config, prefix: str = "") -> list[str]:
  out = []
  for key in config.keys():
    value = config[key]
    path = f"{prefix}{key}"
    out.append(path)
    if hasattr(value, "keys") and hasattr(value, "items"):
      out += _leaf_paths(value, path + ".")
  return out


def _override_value_error(path: str, value: str, default) -> Optional[str]:
  """Why `value` cannot replace the int / float / bool field `default` (None: it can)."""
  text = value.strip()
  if isinstance(default, bool):
    ok = text.lower() in ("true", "t", "1", "false", "f", "0")
    return None if ok else f"expected true or false, got {value!r}"
  if isinstance(default, int):
    for base in (10, 0):
      try:
        int(text, base)
        return None
      except ValueError:
        pass
    return f"expected an int, got {value!r}"
  if isinstance(default, float):
    try:
      float(text)
      return None
    except ValueError:
      return f"expected a float, got {value!r}"
  return None


def check_overrides(argv: Sequence[str], config, flag: str = "config") -> None:
  """Every `--config.a.b[=v]` names a field of `config`, and a number / bool field gets one.

  Raises:
    UserError: naming the override and the closest fields (difflib), or the expected type.
  """
  every = _leaf_paths(config)
  for arg in argv:
    m = re.match(rf"^--?(no)?{re.escape(flag)}\.([^=]+)(=(.*))?$", arg, re.S)
    if not m:
      continue
    path = m.group(2)
    node, keys = config, path.split(".")
    for i, key in enumerate(keys):
      if hasattr(node, "keys") and key in node.keys():
        node = node[key]
        continue
      # the same path with this key corrected; else fields whose name resembles the last key,
      # those next to the misspelt one first
      fixed = [".".join(keys[:i] + [k] + keys[i + 1:])
               for k in close_matches(key, node.keys() if hasattr(node, "keys") else [])]
      near = [p for p in fixed if p in every]
      if not near:
        last, parent = keys[-1], ".".join(keys[:-1])
        score = lambda p: (p.rsplit(".", 1)[0] == parent if "." in p else not parent,
                           difflib.SequenceMatcher(None, last, p.rsplit(".", 1)[-1]).ratio())
        alike = [p for p in every if (len(last) > 2 and last in p.rsplit(".", 1)[-1]) or
                 close_matches(last, [p.rsplit(".", 1)[-1]])]
        near = sorted(alike, key=score, reverse=True)
      if near:
        hint = "; did you mean " + " or ".join(f"--{flag}.{p}" for p in near[:3]) + "?"
      else:
        where = f"{flag}." + ".".join(keys[:i]) if i else flag
        fields = sorted(node.keys()) if hasattr(node, "keys") else []
        hint = f"; {where} has {', '.join(fields) or 'no fields'}"
      raise UserError(f"--{flag}.{path}: no such config field{hint}")
    if m.group(3) and not m.group(1):
      why = _override_value_error(path, m.group(4), node)
      if why:
        raise UserError(f"--{flag}.{path}: {why}")


def _absl_message(error: Exception) -> str:
  text = one_line(error)
  m = re.match(r"^flag --(\S+)=None: Flag --\1 must have a value other than None\.$", text)
  return f"--{m.group(1)} is required" if m else text


def _parse_absl_flags(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # unknown flag, bad value, missing required flag
    sys.exit(report(UserError(_absl_message(e))))


def run_absl(main: Callable[[list[str]], Any], *, config_flag: Optional[str] = None,
             setup: Optional[Callable[[], None]] = None) -> None:
  """`absl.app.run(main)` with one-line user errors (exit 2).

  Args:
    main: the absl main(argv); it may raise UserError.
    config_flag: name of a `config_flags.DEFINE_config_file` flag to check first: the file is
      loaded and every `--<flag>.a.b` override matched against it before absl parses anything.
    setup: called after that check and before absl parses the flags (e.g. to define jax's absl
      flags without importing jax for a command that fails on its arguments).
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  try:
    if config_flag:
      value = _flag_value(sys.argv[1:], config_flag)
      if value is not None:
        check_overrides(sys.argv[1:], load_config_file(value, config_flag), config_flag)
  except UserError as e:
    sys.exit(report(e))
  if setup is not None:
    setup()

  def wrapped(argv):
    try:
      return main(argv)
    except UserError as e:
      sys.exit(report(e))
  app.run(wrapped, flags_parser=_parse_absl_flags)
