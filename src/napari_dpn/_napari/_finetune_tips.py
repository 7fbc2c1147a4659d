"""The Fine-tune widget's tooltips, kept apart so the panels read as layouts."""

TRAIN_LIST = (
    "Image layers whose '<image> vessels' layer you corrected (edited, saved, or opened from a "
    "saved annotation). Ticked ones are trained on."
)
TRAIN_FOLDER = "A folder of images with <image>_vessels.png (and <image>_fov.png) saved by 'Segment vessels'."
VAL_LIST = (
    "Image layers with a ground-truth labels layer. Metrics before and after and the recommended "
    "threshold are computed on them."
)
VAL_IMAGE = "An image layer to validate on."
VAL_GT = "Its ground-truth annotation (a labels layer)."
VAL_ADD = "Add this image + ground truth to the validation list."
VAL_FOLDER = "A folder of images with <image>_vessels.png ground truth (and <image>_fov.png)."
FOLDER_CLEAR = "Do not use a folder."

BASE_MODEL = "The model to start from."
STEPS = "Optimisation steps (one random crop each). A few hundred adapt the shipped model to your images."
CROP = (
    "Side of the random training crop in pixels (the paper used 512); smaller is faster per step. "
    "Images smaller than the crop are padded."
)
LR = "Adam learning rate. 1e-4 fine-tunes gently; the paper trained from scratch with 1e-3."
AUGMENT = "The paper's 11 offline views (rotations, flips) and random mirroring of the crops."
DEVICE = "Where training runs; 'auto' picks a GPU when present."
NAME = "Name of the new model in the user models folder (letters, digits, '.', '_', '-', '+')."

CANCEL = "Stop before the next step; the checkpoint is kept."
RESUME = (
    "Train on from a checkpoint up to the Steps set: the last cancelled or finished run, else a "
    ".ckpt.pt file you pick (trained on the ticked pairs). Never replaces a model."
)

TABLE = (
    "Inside the FOV, pooled over the validation images at the model's working scale, each model at "
    "the threshold it is used with: Before at the base model's card threshold, After at the new "
    "card's (max accuracy on the validation images, the rule of the shipped models); AUC is "
    "threshold-free."
)
TABLE_EMPTY = (
    "No validation images: add an image with a ground-truth labels layer, or a folder, to compare before and after."
)
SAVE_CHECKPOINT = "After a cancel: save the weights of the last checkpoint as a model (with its card and threshold)."
