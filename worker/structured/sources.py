"""A constraint as the text the grammar compiler reads, and the content hash it is cached under.

No xgrammar and no torch: this runs on the engine thread when a job arrives, so it only
serialises and hashes; checking and compiling happen on the compile threads.
"""

import hashlib
import json
from dataclasses import dataclass

from llm_worker.schemas.structured import ConstraintKind, StructuredOutputs
from llm_worker.structured.errors import InvalidChoiceError


@dataclass(frozen=True)
class ConstraintSource:
    kind: ConstraintKind
    text: str  # compact JSON schema (key order kept: it is the output's order), regex or EBNF
    key: str  # sha256 of kind and text

    @classmethod
    def of(cls, constraint: StructuredOutputs) -> "ConstraintSource":
        kind = constraint.kind
        if constraint.json_schema is not None:
            text = json.dumps(constraint.json_schema, separators=(",", ":"), ensure_ascii=False)
        elif constraint.regex is not None:
            text = constraint.regex
        elif constraint.choice is not None:
            text = choice_grammar(constraint.choice)
        else:
            assert constraint.grammar is not None  # StructuredOutputs holds exactly one kind
            text = constraint.grammar
        digest = hashlib.sha256(f"{kind}\0{text}".encode()).hexdigest()
        return cls(kind, text, digest)


def choice_grammar(choices: list[str]) -> str:
    """An EBNF grammar whose language is exactly `choices`.

    A JSON string literal is a GBNF literal with the same escapes; ensure_ascii=False keeps
    characters outside the BMP whole, since GBNF reads no UTF-16 surrogate pairs.
    """
    if not choices:
        raise InvalidChoiceError("choice must list at least one string")
    options = " | ".join(json.dumps(c, ensure_ascii=False) for c in dict.fromkeys(choices))
    return f"root ::= {options}"
