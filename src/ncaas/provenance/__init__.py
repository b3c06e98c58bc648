"""What a job leaves behind to be reproduced: its certificate (:mod:`.certificate`), signed by the
platform (:mod:`.signing`), the blueprint versions it ran (:mod:`.archive`), and reruns (:mod:`.rerun`)."""
