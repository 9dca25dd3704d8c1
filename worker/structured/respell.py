"""Grammar text made safe to read back: unambiguous escapes, and no UTF-16 surrogates.

The backend compiles every constraint from the EBNF xgrammar prints, and xgrammar 0.2.9's
printer and parser disagree in two ways that change what a grammar admits:
- it prints U+001F followed by "0" as `"\\x1f0"`, which its parser reads back as U+01F0;
  every literal and class is therefore re-spelled with fixed-width `\\UHHHHHHHH` escapes;
- it matches bytes as UTF-8 code points and lets a class reach the surrogates U+D800-U+DFFF
  (a negated class such as JSON's string characters, or a regex `.` printed as
  `[\\0-\\U0010ffff]`); their three-byte encodings are not UTF-8, so such an output decodes to
  U+FFFD replacement characters and a string's length or pattern no longer holds. Negated
  classes gain the surrogate range, positive ranges are split around it.
"""

from llm_worker.structured.ebnf_text import CharClass, literal_text, rewrite
from llm_worker.structured.errors import InvalidGrammarError

SURROGATES = (0xD800, 0xDFFF)


def respelled(ebnf: str) -> str:
    """`ebnf` (as xgrammar prints a grammar) spelled so it reads back as printed, with no
    class that admits a surrogate."""
    return rewrite(ebnf, on_literal=literal_text, on_class=_without_surrogates)


def _without_surrogates(char_class: CharClass) -> str:
    fixed = char_class.without(*SURROGATES)
    if fixed.is_empty:
        raise InvalidGrammarError("a character class holds only UTF-16 surrogates")
    return fixed.text()
