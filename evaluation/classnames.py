"""Class names of the benchmarks, in label-id order, exactly as the reference harnesses spell them.

Index i of a tuple is label id i of the dataset's annotation files. The GroupViT/CoCu harness renames
a few VOC and Context classes for the text prompts; TCL's harness prompts mmseg's raw names. Quirks are
kept on purpose (ADE20K's ``'bed '``, COCO-Stuff's hyphenated stuff names): changing a prompt changes
the number. Sources: GroupViT/CoCu ``segmentation/datasets/*.py``, mmsegmentation 0.x dataset classes.
"""
from __future__ import annotations

# PASCAL VOC 2012, mmseg PascalVOCDataset order (label id = index); TCL prompts with these names.
VOC = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
    'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor',
)


# GroupViT/CoCu override: diningtable -> table, pottedplant -> plant, tvmonitor -> monitor.
VOC_GROUPVIT = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'table',
    'dog', 'horse', 'motorbike', 'person', 'plant', 'sheep', 'sofa', 'train', 'monitor',
)


# PASCAL Context 60 (mmseg PascalContextDataset, ids written by its pascal_context.py converter).
CONTEXT = (
    'background', 'aeroplane', 'bag', 'bed', 'bedclothes', 'bench', 'bicycle', 'bird', 'boat', 'book', 'bottle',
    'building', 'bus', 'cabinet', 'car', 'cat', 'ceiling', 'chair', 'cloth', 'computer', 'cow', 'cup', 'curtain',
    'dog', 'door', 'fence', 'floor', 'flower', 'food', 'grass', 'ground', 'horse', 'keyboard', 'light', 'motorbike',
    'mountain', 'mouse', 'person', 'plate', 'platform', 'pottedplant', 'road', 'rock', 'sheep', 'shelves',
    'sidewalk', 'sign', 'sky', 'snow', 'sofa', 'table', 'track', 'train', 'tree', 'truck', 'tvmonitor', 'wall',
    'water', 'window', 'wood',
)


# GroupViT/CoCu override: aeroplane -> airplane, pottedplant -> plant, tvmonitor -> monitor.
CONTEXT_GROUPVIT = (
    'background', 'airplane', 'bag', 'bed', 'bedclothes', 'bench', 'bicycle', 'bird', 'boat', 'book', 'bottle',
    'building', 'bus', 'cabinet', 'car', 'cat', 'ceiling', 'chair', 'cloth', 'computer', 'cow', 'cup', 'curtain',
    'dog', 'door', 'fence', 'floor', 'flower', 'food', 'grass', 'ground', 'horse', 'keyboard', 'light', 'motorbike',
    'mountain', 'mouse', 'person', 'plate', 'platform', 'plant', 'road', 'rock', 'sheep', 'shelves', 'sidewalk',
    'sign', 'sky', 'snow', 'sofa', 'table', 'track', 'train', 'tree', 'truck', 'monitor', 'wall', 'water', 'window',
    'wood',
)


# COCO-Object: background + the 80 COCO things in COCO id order (GroupViT COCOObjectDataset).
COCO_OBJECT = (
    'background', 'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
    'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep',
    'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee',
    'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
    'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich',
    'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch', 'potted plant', 'bed',
    'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell phone', 'microwave', 'oven',
    'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear', 'hair drier',
    'toothbrush',
)


# COCO-Stuff-164k, mmseg COCOStuffDataset: hyphenated stuff names are prompted as is.
COCO_STUFF = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat', 'traffic light',
    'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
    'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee', 'skis',
    'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
    'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich',
    'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch', 'potted plant', 'bed',
    'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell phone', 'microwave', 'oven',
    'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear', 'hair drier',
    'toothbrush', 'banner', 'blanket', 'branch', 'bridge', 'building-other', 'bush', 'cabinet', 'cage', 'cardboard',
    'carpet', 'ceiling-other', 'ceiling-tile', 'cloth', 'clothes', 'clouds', 'counter', 'cupboard', 'curtain',
    'desk-stuff', 'dirt', 'door-stuff', 'fence', 'floor-marble', 'floor-other', 'floor-stone', 'floor-tile',
    'floor-wood', 'flower', 'fog', 'food-other', 'fruit', 'furniture-other', 'grass', 'gravel', 'ground-other',
    'hill', 'house', 'leaves', 'light', 'mat', 'metal', 'mirror-stuff', 'moss', 'mountain', 'mud', 'napkin', 'net',
    'paper', 'pavement', 'pillow', 'plant-other', 'plastic', 'platform', 'playingfield', 'railing', 'railroad',
    'river', 'road', 'rock', 'roof', 'rug', 'salad', 'sand', 'sea', 'shelf', 'sky-other', 'skyscraper', 'snow',
    'solid-other', 'stairs', 'stone', 'straw', 'structural-other', 'table', 'tent', 'textile-other', 'towel',
    'tree', 'vegetable', 'wall-brick', 'wall-concrete', 'wall-other', 'wall-panel', 'wall-stone', 'wall-tile',
    'wall-wood', 'water-other', 'waterdrops', 'window-blind', 'window-other', 'wood',
)


# Cityscapes, the 19 train ids.
CITYSCAPES = (
    'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign', 'vegetation',
    'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle', 'bicycle',
)


# ADE20K, mmseg ADE20KDataset as is, quirks included ('bed ' with a trailing space).
ADE20K = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed ', 'windowpane', 'grass', 'cabinet',
    'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain', 'chair', 'car', 'water',
    'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair', 'seat', 'fence', 'desk',
    'rock', 'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator', 'grandstand', 'path',
    'stairs', 'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge', 'bookcase',
    'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove', 'palm',
    'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus', 'towel', 'light',
    'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth', 'television receiver', 'airplane',
    'dirt track', 'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet', 'poster',
    'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything', 'swimming pool', 'stool',
    'barrel', 'basket', 'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven', 'ball', 'food', 'step', 'tank',
    'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket', 'sculpture',
    'hood', 'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen', 'plate', 'monitor',
    'bulletin board', 'shower', 'radiator', 'glass', 'clock', 'flag',
)


# ImageNet-S50 (mmseg/CoCu ImageNetSDataset.CLASSES50).
IMAGENET_S50 = (
    'background', 'goldfish', 'tiger shark', 'goldfinch', 'tree frog', 'kuvasz', 'red fox', 'siamese cat',
    'american black bear', 'ladybug', 'sulphur butterfly', 'wood rabbit', 'hamster', 'wild boar', 'gibbon',
    'african elephant', 'giant panda', 'airliner', 'ashcan', 'ballpoint', 'beach wagon', 'boathouse',
    'bullet train', 'cellular telephone', 'chest', 'clog', 'container ship', 'digital watch', 'dining table',
    'golf ball', 'grand piano', 'iron', 'lab coat', 'mixing bowl', 'motor scooter', 'padlock', 'park bench',
    'purse', 'streetcar', 'table lamp', 'television', 'toilet seat', 'umbrella', 'vase', 'water bottle',
    'water tower', 'yawl', 'street sign', 'lemon', 'carbonara', 'agaric',
)


# ImageNet-S300 (mmseg/CoCu ImageNetSDataset.CLASSES300).
IMAGENET_S300 = (
    'background', 'tench', 'goldfish', 'tiger shark', 'hammerhead', 'electric ray', 'ostrich', 'goldfinch',
    'house finch', 'indigo bunting', 'kite', 'common newt', 'axolotl', 'tree frog', 'tailed frog', 'mud turtle',
    'banded gecko', 'american chameleon', 'whiptail', 'african chameleon', 'komodo dragon', 'american alligator',
    'triceratops', 'thunder snake', 'ringneck snake', 'king snake', 'rock python', 'horned viper', 'harvestman',
    'scorpion', 'garden spider', 'tick', 'african grey', 'lorikeet', 'red-breasted merganser', 'wallaby', 'koala',
    'jellyfish', 'sea anemone', 'conch', 'fiddler crab', 'american lobster', 'spiny lobster', 'isopod', 'bittern',
    'crane', 'limpkin', 'bustard', 'albatross', 'toy terrier', 'afghan hound', 'bluetick', 'borzoi',
    'irish wolfhound', 'whippet', 'ibizan hound', 'staffordshire bullterrier', 'border terrier',
    'yorkshire terrier', 'lakeland terrier', 'giant schnauzer', 'standard schnauzer', 'scotch terrier', 'lhasa',
    'english setter', 'clumber', 'english springer', 'welsh springer spaniel', 'kuvasz', 'kelpie', 'doberman',
    'miniature pinscher', 'malamute', 'pug', 'leonberg', 'great pyrenees', 'samoyed', 'brabancon griffon',
    'cardigan', 'coyote', 'red fox', 'kit fox', 'grey fox', 'persian cat', 'siamese cat', 'cougar', 'lynx', 'tiger',
    'american black bear', 'sloth bear', 'ladybug', 'leaf beetle', 'weevil', 'bee', 'cicada', 'leafhopper',
    'damselfly', 'ringlet', 'cabbage butterfly', 'sulphur butterfly', 'sea cucumber', 'wood rabbit', 'hare',
    'hamster', 'wild boar', 'hippopotamus', 'bighorn', 'ibex', 'badger', 'three-toed sloth', 'orangutan', 'gibbon',
    'colobus', 'spider monkey', 'squirrel monkey', 'madagascar cat', 'indian elephant', 'african elephant',
    'giant panda', 'barracouta', 'eel', 'coho', 'academic gown', 'accordion', 'airliner', 'ambulance',
    'analog clock', 'ashcan', 'backpack', 'balloon', 'ballpoint', 'barbell', 'barn', 'bassoon', 'bath towel',
    'beach wagon', 'bicycle-built-for-two', 'binoculars', 'boathouse', 'bonnet', 'bookcase', 'bow', 'brass',
    'breastplate', 'bullet train', 'cannon', 'can opener', "carpenter's kit", 'cassette', 'cellular telephone',
    'chain saw', 'chest', 'china cabinet', 'clog', 'combination lock', 'container ship', 'corkscrew', 'crate',
    'crock pot', 'digital watch', 'dining table', 'dishwasher', 'doormat', 'dutch oven', 'electric fan',
    'electric locomotive', 'envelope', 'file', 'folding chair', 'football helmet', 'freight car', 'french horn',
    'fur coat', 'garbage truck', 'goblet', 'golf ball', 'grand piano', 'half track', 'hamper', 'hard disc',
    'harmonica', 'harvester', 'hook', 'horizontal bar', 'horse cart', 'iron', "jack-o'-lantern", 'lab coat',
    'ladle', 'letter opener', 'liner', 'mailbox', 'megalith', 'military uniform', 'milk can', 'mixing bowl',
    'monastery', 'mortar', 'mosquito net', 'motor scooter', 'mountain bike', 'mountain tent', 'mousetrap',
    'necklace', 'nipple', 'ocarina', 'padlock', 'palace', 'parallel bars', 'park bench', 'pedestal',
    'pencil sharpener', 'pickelhaube', 'pillow', 'planetarium', 'plastic bag', 'polaroid camera', 'pole', 'pot',
    'purse', 'quilt', 'radiator', 'radio', 'radio telescope', 'rain barrel', 'reflex camera', 'refrigerator',
    'rifle', 'rocking chair', 'rubber eraser', 'rule', 'running shoe', 'sewing machine', 'shield', 'shoji', 'ski',
    'ski mask', 'slot', 'soap dispenser', 'soccer ball', 'sock', 'soup bowl', 'space heater', 'spider web',
    'spindle', 'sports car', 'steel arch bridge', 'stethoscope', 'streetcar', 'submarine', 'swimming trunks',
    'syringe', 'table lamp', 'tank', 'teddy', 'television', 'throne', 'tile roof', 'toilet seat', 'trench coat',
    'trimaran', 'typewriter keyboard', 'umbrella', 'vase', 'volleyball', 'wardrobe', 'warplane', 'washer',
    'water bottle', 'water tower', 'whiskey jug', 'wig', 'wine bottle', 'wok', 'wreck', 'yawl', 'yurt',
    'street sign', 'traffic light', 'consomme', 'ice cream', 'bagel', 'cheeseburger', 'hotdog', 'mashed potato',
    'spaghetti squash', 'bell pepper', 'cardoon', 'granny smith', 'strawberry', 'lemon', 'carbonara', 'burrito',
    'cup', 'coral reef', "yellow lady's slipper", 'buckeye', 'agaric', 'gyromitra', 'earthstar', 'bolete',
)


# TCL's background-free variants (reduce_zero_label: label 0 is ignored, the rest shift down by one).
VOC20 = VOC[1:]
CONTEXT59 = CONTEXT[1:]
