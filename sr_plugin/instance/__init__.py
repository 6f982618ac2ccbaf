"""How sr-plugin changes a pipeline or model instance and undoes it exactly (instance patches, rollback, hook
residue), and reads call arguments by name: the ground floor every other room stands on."""
