"""Facts about CelebA shared by the loader and the generator."""

# The 40 attributes, in the order of list_attr_celeba.
ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup",
    "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns",
    "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip

# Fraction of positives per attribute in the CelebA release (rounded).
BASE_RATES = {
    "5_o_Clock_Shadow": 0.11, "Arched_Eyebrows": 0.27, "Attractive": 0.51,
    "Bags_Under_Eyes": 0.20, "Bald": 0.022, "Bangs": 0.15, "Big_Lips": 0.24, "Big_Nose": 0.23,
    "Black_Hair": 0.24, "Blond_Hair": 0.15, "Blurry": 0.05, "Brown_Hair": 0.21,
    "Bushy_Eyebrows": 0.14, "Chubby": 0.06, "Double_Chin": 0.05, "Eyeglasses": 0.065,
    "Goatee": 0.063, "Gray_Hair": 0.042, "Heavy_Makeup": 0.39, "High_Cheekbones": 0.46,
    "Male": 0.42, "Mouth_Slightly_Open": 0.48, "Mustache": 0.042, "Narrow_Eyes": 0.12,
    "No_Beard": 0.83, "Oval_Face": 0.28, "Pale_Skin": 0.043, "Pointy_Nose": 0.28,
    "Receding_Hairline": 0.08, "Rosy_Cheeks": 0.066, "Sideburns": 0.057, "Smiling": 0.48,
    "Straight_Hair": 0.21, "Wavy_Hair": 0.32, "Wearing_Earrings": 0.19, "Wearing_Hat": 0.048,
    "Wearing_Lipstick": 0.47, "Wearing_Necklace": 0.12, "Wearing_Necktie": 0.073, "Young": 0.77,
}  # fmt: skip

IMAGE_WIDTH, IMAGE_HEIGHT = 178, 218  # img_align_celeba
ATTR_CSV, ATTR_TXT = "list_attr_celeba.csv", "list_attr_celeba.txt"
PARTITION_CSV, PARTITION_TXT = "list_eval_partition.csv", "list_eval_partition.txt"
IMAGES_DIR = "img_align_celeba"
LANDMARKS_CSV, LANDMARKS_TXT = "list_landmarks_align_celeba.csv", "list_landmarks_align_celeba.txt"
# Kaggle's header (the original release's second line, space separated); left/right as seen.
LANDMARK_COLUMNS = (
    "lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
    "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y",
)  # fmt: skip
