"""The generic attack suite (issue 12, item 2).

Three families of cases, each a list built by introspection so that a new
entry point or type shows up on its own (and a public name the suite does
not know fails `test_the_matrix_knows_every_public_name`):

- tests/attack/entries.py: every public entry point, one line each, with
  the kind of each argument; the re-entrancy matrix passes each argument
  a hostile object (tests/attack/hostile.py) whose dunder methods run an
  action (release the buffer, gc.collect(), re-register an allocator or a
  view kind, mutate the options mapping, unpin everything, raise) in the
  middle of the call (tests/test_attack_matrix.py).
- tests/attack/referents.py: everything gc.get_referents() hands out from
  a buffer in every state, the module, its types, allocators, view
  entries, capsules and device views; each mutable container is filled
  with junk, cleared or has its values replaced, then the API is driven.
- tests/attack/types_cases.py: descriptor, constructor and pickling misuse
  of every type the module defines or returns (tests/test_attack_types.py).

Cases run in a fork server (tests/attack/forkserver.py): one subprocess
imports memmanager once and forks a child per group of cases, so a
segfault, an abort or a hang is a failure of the named case, not a dead
pytest.  Known bugs that other branches fix are listed, one line each, in
tests/attack/known.py and become xfail(strict=False) marks.
"""
