"""Networks: by name (:mod:`.zoo`, each an :class:`~kdstyles.models.zoo.Arch` record), ImageNet
weights (:mod:`.pretrained`), taps and adapters, the project's MobileNetV2 and CenterNet heads."""
