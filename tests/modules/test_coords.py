import torch

from ldm.modules.implicit.coords import make_cell, make_coord, sample_queries


def test_make_coord_pixel_centres_by_hand():
    grid = make_coord((2, 3), flatten=False)
    assert grid.shape == (2, 3, 2)
    rows = torch.tensor([-0.5, 0.5])  # r = 1/2: -1 + 1/2, -1 + 1/2 + 1
    cols = torch.tensor([-2 / 3, 0.0, 2 / 3])  # r = 1/3
    assert torch.allclose(grid[:, 0, 0], rows)
    assert torch.allclose(grid[0, :, 1], cols)
    assert torch.allclose(grid[1, 2], torch.tensor([0.5, 2 / 3]))


def test_make_coord_flattens_row_major():
    flat = make_coord((2, 3))
    assert flat.shape == (6, 2)
    assert torch.equal(flat, make_coord((2, 3), flatten=False).reshape(6, 2))
    assert torch.allclose(flat[1], torch.tensor([-0.5, 0.0]))  # second column of the first row


def test_make_coord_follows_device_and_dtype():
    grid = make_coord((4, 4), device="cpu", dtype=torch.float64)
    assert grid.dtype == torch.float64 and grid.device.type == "cpu"
    assert make_coord((4, 4)).dtype == torch.float32


def test_make_cell_is_one_output_pixel():
    cell = make_cell((4, 8))
    assert cell.shape == (32, 2)
    assert torch.allclose(cell, torch.tensor([0.5, 0.25]).expand(32, 2))
    assert make_cell((4, 8), n=5).shape == (5, 2)


def test_sample_queries_draws_per_sample_and_reads_the_image():
    torch.manual_seed(0)
    image = torch.randn(3, 1, 12, 10)
    coords, cells, values = sample_queries(image, 20)
    assert coords.shape == (3, 20, 2) and cells.shape == (3, 20, 2) and values.shape == (3, 20, 1)
    # different pixels for different batch elements (the reference ignored the batch dimension)
    assert not torch.equal(coords[0], coords[1]) and not torch.equal(coords[1], coords[2])
    # no pixel twice within a sample
    assert all(len({tuple(c.tolist()) for c in coords[i]}) == 20 for i in range(3))
    # the values are the image at those pixel centres
    row = ((coords[..., 0] + 1) * 12 / 2 - 0.5).round().long()
    col = ((coords[..., 1] + 1) * 10 / 2 - 0.5).round().long()
    expected = torch.stack([image[i, 0, row[i], col[i]] for i in range(3)])[..., None]
    assert torch.equal(values, expected)
    assert torch.allclose(cells, torch.tensor([2 / 12, 2 / 10]).expand(3, 20, 2))


def test_sample_queries_caps_at_the_image_size():
    coords, _, values = sample_queries(torch.randn(2, 1, 4, 4), 100)
    assert coords.shape == (2, 16, 2) and values.shape == (2, 16, 1)
