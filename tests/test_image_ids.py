"""Image ids stay inside the data root (issue 22, case 10): an annotation, label or split file naming
`../../outside/x` or an absolute path would make a run read and rank any image on the machine. Refused in
data.check and the loaders alike; a symlink the user placed inside the root stays allowed."""
from __future__ import annotations

import pytest

from config import Config
from data.formats import open_dataset
from data.loaders import drop_missing, drop_missing_eval
from tests.helpers import write_fashion200k, write_fashioniq, write_image
from tools.data_commands import check_main
from utils.errors import UserError


@pytest.fixture()
def outside(tmp_path):
    """A real image beside the data root tmp_path/data, which no annotation may reach."""
    return write_image(tmp_path / "outside" / "x.jpg")


def fashion200k(root, image_id):
    write_fashion200k(root, {"dress": [(image_id, "red dress"), ("women/d/1.jpeg", "blue dress")]},
                      {"dress": [(image_id, "red dress"), ("women/d/1.jpeg", "blue dress")]},
                      queries=[f"{image_id} women/d/1.jpeg"])
    write_image(root / "fashion200K" / "women" / "d" / "1.jpeg")
    return open_dataset(Config(dataset="fashion200k", data_root=str(root)))


@pytest.mark.parametrize("image_id", ["../../outside/x.jpg", "{outside}"], ids=["dot-dot", "absolute"])
def test_ids_leading_out_of_the_root_are_refused(tmp_path, outside, capsys, image_id):
    root = tmp_path / "data"
    fmt = fashion200k(root, image_id.format(outside=outside))
    assert (fmt.root / "../../outside/x.jpg").resolve() == outside.resolve()  # the file is there to be read
    with pytest.raises(UserError, match="leads outside the data root"):
        drop_missing(fmt, fmt.train_triplets(0))
    with pytest.raises(UserError, match="leads outside the data root"):
        for s in fmt.eval_splits("test"):
            drop_missing_eval(fmt, s)
    capsys.readouterr()
    assert check_main(["--dataset", "fashion200k", "--data_root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "leads outside the data root" in err and err.count("\n") == 1


def test_fashioniq_split_naming_a_parent_folder_is_refused(tmp_path, outside):
    root = tmp_path / "data"
    write_fashioniq(root, annotations=[{"candidate": "../../../outside/x", "target": "A2",
                                        "captions": ["is red", "is long"]}])
    write_image(root / "fashionIQ" / "img" / "A2.jpg")
    fmt = open_dataset(Config(dataset="fashioniq", data_root=str(root), categories="dress"))
    with pytest.raises(UserError, match="'../../../outside/x'"):
        drop_missing(fmt, fmt.train_triplets(0))


def test_a_symlink_placed_inside_the_root_stays_allowed(tmp_path, outside):
    root = tmp_path / "data"
    fmt = fashion200k(root, "women/d/0.jpeg")
    (root / "fashion200K" / "women" / "d" / "0.jpeg").symlink_to(outside)
    assert len(drop_missing(fmt, fmt.train_triplets(0))) == 2
    assert fmt.image_path("women/d/0.jpeg").resolve() == outside.resolve()
    assert check_main(["--dataset", "fashion200k", "--data_root", str(root)]) == 0
