# PyTorch CPU peer for the training speed of a reduced Ad-Corre network: the Keras-style
# Xception of adcorre's XceptionConfig (width multiplier, middle blocks) with k L2-normalised
# heads, one Adam step (cross-entropy) on the CPU, median of N, torch's default threads.
# For the published network use ../shared/bench/torch_cpu_train.py (the same architecture at
# width 1, 8 middle blocks, 7 heads of 256).
#
# usage: python3 torch_xception_train.py CONFIG.json [STEPS]   (an adcorre TrainConfig file:
#        network.backbone.width / middle_blocks / in_channels, num_heads, embedding_dim,
#        num_classes, input_size, batch_size)
import json, sys, time
import torch, torch.nn as nn, torch.nn.functional as F


def channels(keras, width):
    return max(1, round(keras * width))


class SepConvBn(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.dw = nn.Conv2d(i, i, 3, padding=1, groups=i, bias=False)
        self.pw = nn.Conv2d(i, o, 1, bias=False)
        self.bn = nn.BatchNorm2d(o, eps=1e-3)

    def forward(self, x):
        return self.bn(self.pw(self.dw(x)))


class EntryBlock(nn.Module):
    def __init__(self, i, mid, o, relu_first):
        super().__init__()
        self.sep1, self.sep2 = SepConvBn(i, mid), SepConvBn(mid, o)
        self.shortcut = nn.Conv2d(i, o, 1, stride=2, bias=False)
        self.shortcut_bn = nn.BatchNorm2d(o, eps=1e-3)
        self.relu_first = relu_first

    def forward(self, x):
        residual = self.shortcut_bn(self.shortcut(x))
        y = F.relu(x) if self.relu_first else x
        y = self.sep2(F.relu(self.sep1(y)))
        # TensorFlow "same" pooling: the odd extra row/column goes after.
        h, w = y.shape[-2:]
        pad_h, pad_w = max((-(-h // 2) - 1) * 2 + 3 - h, 0), max((-(-w // 2) - 1) * 2 + 3 - w, 0)
        y = F.pad(y, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=float("-inf"))
        return F.max_pool2d(y, 3, 2) + residual


class MiddleBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.seps = nn.ModuleList([SepConvBn(c, c) for _ in range(3)])

    def forward(self, x):
        y = x
        for sep in self.seps:
            y = sep(F.relu(y))
        return y + x


class AdCorreXception(nn.Module):
    def __init__(self, width, middle_blocks, in_channels, heads, embedding, classes):
        super().__init__()
        c = lambda n: channels(n, width)
        self.conv1, self.bn1 = nn.Conv2d(in_channels, c(32), 3, 2, bias=False), nn.BatchNorm2d(c(32), eps=1e-3)
        self.conv2, self.bn2 = nn.Conv2d(c(32), c(64), 3, bias=False), nn.BatchNorm2d(c(64), eps=1e-3)
        blocks = [EntryBlock(c(64), c(128), c(128), False), EntryBlock(c(128), c(256), c(256), True),
                  EntryBlock(c(256), c(728), c(728), True)]
        blocks += [MiddleBlock(c(728)) for _ in range(middle_blocks)]
        blocks.append(EntryBlock(c(728), c(728), c(1024), True))
        self.blocks = nn.Sequential(*blocks)
        self.sep3, self.sep4 = SepConvBn(c(1024), c(1536)), SepConvBn(c(1536), c(2048))
        self.heads = nn.ModuleList([nn.Linear(c(2048), embedding) for _ in range(heads)])
        self.classifier = nn.Linear(embedding * heads, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.blocks(x)
        x = F.relu(self.sep4(F.relu(self.sep3(x))))
        features = x.mean((2, 3))
        embeddings = [F.normalize(head(features), dim=1) for head in self.heads]
        return self.classifier(F.dropout(torch.cat(embeddings, 1), 0.5, self.training)), embeddings


def main():
    config = json.load(open(sys.argv[1]))
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    net, backbone = config.get("network", {}), config.get("network", {}).get("backbone", {})
    batch, size = config.get("batch_size", 50), config.get("input_size", 224)
    torch.manual_seed(0)
    model = AdCorreXception(backbone.get("width", 1.0), backbone.get("middle_blocks", 8), backbone.get("in_channels", 3),
                            net.get("num_heads", 7), net.get("embedding_dim", 256), net.get("num_classes", 7))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3, eps=1e-7)
    x = torch.rand(batch, backbone.get("in_channels", 3), size, size)
    y = torch.arange(batch) % net.get("num_classes", 7)

    def step():
        logits, _ = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times.sort()
    median = times[len(times) // 2]
    params = sum(p.numel() for p in model.parameters())
    print(f"torch-cpu threads={torch.get_num_threads()} params={params} bs={batch} hw={size} "
          f"train_step_median={median:.4f}s imgs_per_s={batch / median:.2f}", flush=True)


main()
