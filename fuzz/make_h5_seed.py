# A small Keras-layout seed for the keras_h5 fuzz target: the fixture's groups, attributes and
# weight names with every channel count scaled by 1/32 (as adcorre's width rounds), 8 features
# per head. Seeds only; not committed as a fixture.
import sys, h5py, numpy as np
src, dst = sys.argv[1], sys.argv[2]
W = 1 / 32
def ch(d):
    return max(1, int(round(d * W)))
def shape_of(name, shape):
    leaf = name.rsplit('/', 1)[-1]
    if name.split('/')[-2].startswith('dense') or name.split('/')[-2] == 'out':
        if leaf.startswith('kernel'):
            i, o = shape
            if name.split('/')[-2] == 'out':
                return (i // 256 * 8, o)
            return (ch(i), 8)
        if leaf.startswith('bias'):
            return shape if name.split('/')[-2] == 'out' else (8,)
    if len(shape) == 4:
        kh, kw, i, o = shape
        i2 = i if i == 3 and 'block1_conv1' in name else ch(i)
        o2 = 1 if leaf.startswith('depthwise') else ch(o)
        return (kh, kw, i2, o2)
    return tuple(ch(d) for d in shape)
with h5py.File(src, 'r') as a, h5py.File(dst, 'w') as b:
    for k, v in a.attrs.items():
        b.attrs[k] = v
    def visit(name, obj):
        if isinstance(obj, h5py.Group):
            g = b.require_group(name)
            for k, v in obj.attrs.items():
                g.attrs[k] = v
        else:
            shape = shape_of(name, obj.shape)
            rng = np.random.default_rng(len(name))
            data = rng.standard_normal(shape).astype(obj.dtype) * 0.1
            if 'variance' in name:
                data = np.abs(data) + 0.5
            b.create_dataset(name, data=data)
    a.visititems(visit)
