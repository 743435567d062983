"""Short LeNet training runs on the ``digits`` fixture, in process."""
from finetune.models.model_file import load_model
from finetune.training.config import build_parser
from finetune.training.config import config_from_args
from finetune.training.fit import fit


def train_args(data, pretrained, out, *extra):
    """``finetune.train`` flags of a small run (batch 16, 30% validation)."""
    return ['--data', data, '--pretrained', pretrained, '--out', str(out),
            '--batchsize', '16', '--val-split', '0.3', '--lr', '0.01',
            '--loaderjob', '0', '--log-interval', '5'] + list(extra)


def run_train(*argv):
    """fit() with the TrainConfig that these command-line flags make;
    returns the final validation metrics."""
    return fit(config_from_args(build_parser().parse_args(list(argv)))
               ).metrics


def params(npz_path):
    """{layer: [parameter arrays]} of a model file."""
    model, _, _ = load_model(npz_path)
    return {name: [p.array.copy() for p in model[name].params()]
            for name in model.layer_names}
