"""Structured outputs: constraints compiled to xgrammar grammars, one matcher per sequence, and
the next-token bitmask filled for a step's constrained rows. Import the modules themselves; this
package imports nothing, so `import llm_worker.structured.errors` costs no torch."""
