"""Visual encoders: torchvision ResNets/AlexNet, timm, EfficientNet-Lite0 (issue 12)."""
