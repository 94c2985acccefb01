"""LEP steps 1–2: new vocabularies (build, import, report) and models converted to them (the operator T)."""
