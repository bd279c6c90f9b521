"""Generate readable nn.Module source from a .pt2 (module-tree recovery, templates, emitter)."""
