"""What keeps an analysis from the platform and from other groups: its immutable environment
(:mod:`.environments`, built in :mod:`.build`'s sandbox) and the sandbox each task runs in
(:mod:`.sandbox`, with its memory and process limits in :mod:`.cgroups` and the plain-words
reason a task was stopped in :mod:`.verdict`)."""
