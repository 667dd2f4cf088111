"""The synthetic semantic-gap world: images whose captions omit concepts that are known exactly."""

from cocu.curation.inputs.synthetic.world import CLASSES, STUFF_NAMES, THING_NAMES, WorldConfig, generate_world

__all__ = ["CLASSES", "STUFF_NAMES", "THING_NAMES", "WorldConfig", "generate_world"]
