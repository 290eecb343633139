"""Command lines written in docs and docstrings, and parsing them as `rsa_jax.main`
does (tests/test_documented_commands.py, tests/test_recipe_config.py).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import shlex

from absl import flags
from ml_collections import config_flags

MODULE_RE = re.compile(r'python3?\s+-m\s+(rsa_jax[\w.]*)')
_STOP = {'&&', '||', ';', '|', '>', '>>', '&', '<', ')'}


@dataclasses.dataclass
class Command:
    where: str            # file:line, or the launch script and its arguments
    module: str
    args: list[str]


def tokens(rest: str) -> list[str]:
    """Shell words of one command's tail, up to the first shell operator."""
    rest = rest.split('`', 1)[0]
    while True:
        lex = shlex.shlex(rest, posix=True, punctuation_chars=True)
        lex.whitespace_split, lex.commenters = True, ''
        try:
            words = list(lex)
            break
        except ValueError:  # an unclosed quote: the command ends where the quote opens
            rest = rest[:max(rest.rfind("'"), rest.rfind('"'))]
    out = []
    for w in words:
        if w in _STOP or w.startswith(('#', '2>')):
            break
        w = w.strip('[]')  # optional parts ([--num_segments 16]) are parsed too
        if w:
            out.append(w)
    return out


def commands_in_text(text: str, where: str) -> list[Command]:
    """Every ``python -m rsa_jax...`` command in ``text`` (``where``: its file, for messages)."""
    found, pending, start = [], '', 0
    for line_no, line in enumerate(text.split('\n'), 1):
        if not pending:
            start = line_no
        if line.endswith('\\'):  # a shell continuation: one command line
            pending += line[:-1] + ' '
            continue
        line, pending = pending + line, ''
        for m in MODULE_RE.finditer(line):
            found.append(Command(f'{where}:{start}', m.group(1), tokens(line[m.end():])))
    return found


def main_flag_values(argv: list[str]) -> flags.FlagValues:
    """Fresh flags as `rsa_jax.main` defines them (copies of its own flag objects).

    config_flags reads the `--config.*` overrides from `sys.argv` in main; here
    they come from `argv`, the command's own words.
    """
    from rsa_jax import main
    fv = flags.FlagValues()
    for flag in flags.FLAGS.get_key_flags_for_module(main):
        if flag.name != 'config':
            fv[flag.name] = copy.deepcopy(flag)
    config_flags.DEFINE_config_file('config', None, 'config', flag_values=fv,
                                    lock_config=True, sys_argv=argv)
    return fv


def parse_main(args: list[str]) -> flags.FlagValues:
    """Parses `rsa_jax.main` arguments the way main does; raises flags.Error if it cannot."""
    argv = ['rsa_jax.main', *args]
    fv = main_flag_values(argv)
    fv(argv)
    for name in ('config', 'workdir'):  # main marks both required
        if fv[name].value is None:
            raise flags.IllegalFlagValueError(f'--{name} is required')
    return fv
