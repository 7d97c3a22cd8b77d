"""What a calibrate job's spec asks of router training reaches the trainer."""

from services.core.settings import Settings
from services.routing.training import TrainConfig
from training_worker.tasks import train_config


def test_the_job_chooses_mode_and_backbone_and_the_service_the_rest():
    settings = Settings(router_backbone="all-minilm-l6-v2", device="cpu")
    assert train_config({"seed": 3}, settings) == TrainConfig(backbone="all-minilm-l6-v2", mode="frozen", seed=3,
                                                              device="cpu")
    asked = train_config({"router_mode": "finetune", "router_backbone": "smollm2-135m-instruct"}, settings)
    assert (asked.mode, asked.backbone, asked.device) == ("finetune", "smollm2-135m-instruct", "cpu")
