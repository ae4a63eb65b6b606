"""Drawing the synthetic car-part photos: five parts, five kinds of damage, three visible severities.

Every function takes a numpy random generator, so the same seed draws the same picture. Images are float RGB
arrays in [0, 1], ``(size, size, 3)``; masks are float arrays in [0, 1]. Severity is drawn to be *visible*:
a bigger, deeper dent; more, longer and deeper scratches; a crack that spreads over more of the glass; more of
the lamp lens missing; a tyre squashed further.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

PAINTS = {  # RGB in [0, 1]: the usual car colours
    "red": (0.70, 0.08, 0.08), "blue": (0.10, 0.22, 0.60), "white": (0.90, 0.90, 0.88), "black": (0.07, 0.07, 0.08),
    "silver": (0.68, 0.70, 0.72), "grey": (0.40, 0.41, 0.43), "green": (0.10, 0.38, 0.20),
    "yellow": (0.88, 0.72, 0.10), "orange": (0.88, 0.40, 0.08), "navy": (0.06, 0.10, 0.28),
    "beige": (0.78, 0.70, 0.55), "maroon": (0.40, 0.05, 0.10),
}
SEVERITY_LEVEL = {"minor": 0, "moderate": 1, "severe": 2}


def _mask(s: int, draw) -> np.ndarray:
    """A float mask drawn by ``draw(ImageDraw)`` on a black ``s x s`` canvas (white = 1)."""
    m = Image.new("L", (s, s), 0)
    draw(ImageDraw.Draw(m))
    return np.asarray(m, np.float32) / 255


def _blend(img: np.ndarray, mask: np.ndarray, colour, alpha: float = 1.0) -> np.ndarray:
    a = (mask * alpha)[..., None]
    return img * (1 - a) + np.asarray(colour, np.float32) * a


def _blur(mask: np.ndarray, radius: float) -> np.ndarray:
    im = Image.fromarray((np.clip(mask, 0, 1) * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(im, np.float32) / 255


def paint(rng: np.random.Generator) -> np.ndarray:
    base = np.array(list(PAINTS.values())[rng.integers(len(PAINTS))], np.float32)
    return np.clip(base * rng.uniform(0.85, 1.15) + rng.normal(0, 0.03, 3), 0, 1)


def background(rng: np.random.Generator, s: int) -> np.ndarray:
    """Sky, garage wall, asphalt or grass: a vertical gradient with blotchy texture."""
    top, bottom = rng.uniform(0.15, 0.85, 3), rng.uniform(0.1, 0.6, 3)
    t = np.linspace(0, 1, s, dtype=np.float32)[:, None, None]
    grid = Image.fromarray((rng.random((6, 6)) * 255).astype(np.uint8)).resize((s, s), Image.BICUBIC)
    blotch = (np.asarray(grid, np.float32) / 255 - 0.5)[..., None] * 0.15
    return np.clip(top * (1 - t) + bottom * t + blotch, 0, 1).astype(np.float32)


def painted_surface(rng: np.random.Generator, s: int, colour: np.ndarray) -> np.ndarray:
    """Glossy car paint: curvature shading, a soft specular reflection band and metallic flake noise."""
    y, x = np.mgrid[0:s, 0:s].astype(np.float32) / s
    shade = 0.75 + 0.35 * np.sin(math.pi * (y * rng.uniform(0.6, 1.2) + rng.uniform(0, 0.4)))
    angle = rng.uniform(0, math.pi)
    d = (x - 0.5) * math.cos(angle) + (y - 0.5) * math.sin(angle) - rng.uniform(-0.3, 0.3)
    band = np.exp(-(d / rng.uniform(0.04, 0.12)) ** 2) * rng.uniform(0.25, 0.6)
    img = colour * shade[..., None] + band[..., None] * (1 - colour * 0.3)
    return np.clip(img + rng.normal(0, 0.012, (s, s, 1)), 0, 1).astype(np.float32)


# ----------------------------------------------------------------------------------------------- parts
# Each returns (image, mask of the part's damageable surface, geometry dict for the damage drawers).


def draw_panel(rng, s):
    img = background(rng, s)
    top = int(s * rng.uniform(0.0, 0.25))
    surface = painted_surface(rng, s, paint(rng))
    m = _mask(s, lambda d: d.rectangle([0, top, s, s], fill=255))
    img = _blend(img, m, 0) + surface * m[..., None]
    gap = int(rng.uniform(0.2, 0.8) * s)  # the seam between two panels
    if rng.random() < 0.6:
        img = _blend(img, _mask(s, lambda d: d.line([(gap, top), (gap + rng.integers(-8, 8), s)], fill=255, width=2)),
                     (0.03, 0.03, 0.03), 0.7)
    return img, m, {"box": (4, top + 4, s - 4, s - 4)}


def draw_bumper(rng, s):
    img = background(rng, s)
    y0, y1 = int(s * rng.uniform(0.15, 0.3)), int(s * rng.uniform(0.75, 0.9))
    plastic = rng.random() < 0.4
    colour = rng.uniform(0.08, 0.2) * np.ones(3, np.float32) if plastic else paint(rng)
    surface = painted_surface(rng, s, colour)
    m = _mask(s, lambda d: d.rounded_rectangle([-10, y0, s + 10, y1], radius=int(s * 0.12), fill=255))
    img = img * (1 - m[..., None]) + surface * m[..., None]
    gy = int(y1 - (y1 - y0) * 0.25)  # the lower grille
    for gx in range(int(s * 0.15), int(s * 0.85), max(6, s // 14)):
        img = _blend(img, _mask(s, lambda d, gx=gx: d.rectangle([gx, gy - 3, gx + s // 24, gy + 3], fill=255)),
                     (0.02, 0.02, 0.02), 0.9)
    if rng.random() < 0.5:  # number plate
        px = int(s * rng.uniform(0.3, 0.45))
        img = _blend(img, _mask(s, lambda d: d.rectangle([px, y0 + 6, px + s // 3, y0 + 6 + s // 9], fill=255)),
                     (0.92, 0.92, 0.85) if rng.random() < 0.5 else (0.95, 0.8, 0.1))
    return img, m, {"box": (8, y0 + 4, s - 8, gy - 6)}


def draw_glass(rng, s):
    img = painted_surface(rng, s, paint(rng))  # the body around the window
    x0, x1, y0 = int(s * rng.uniform(0.02, 0.12)), int(s * rng.uniform(0.88, 0.98)), int(s * rng.uniform(0.05, 0.2))
    poly = [(x0 + s * 0.12, y0), (x1 - s * 0.12, y0), (x1, s * 0.92), (x0, s * 0.92)]
    m = _mask(s, lambda d: d.polygon(poly, fill=255))
    y = np.linspace(0, 1, s, dtype=np.float32)[:, None, None]
    tint = rng.uniform(0.12, 0.3) * np.array([0.9, 1.0, 1.15], np.float32)
    glass = tint + y * rng.uniform(0.0, 0.15)
    xx = np.arange(s, dtype=np.float32)[None, :] + np.arange(s, dtype=np.float32)[:, None] * rng.uniform(0.3, 1.0)
    streaks = (np.sin(xx / rng.uniform(6, 14)) > 0.6) * rng.uniform(0.08, 0.2)  # sky reflection
    glass = glass + streaks[..., None]
    img = img * (1 - m[..., None]) + np.clip(glass, 0, 1) * m[..., None]
    frame = _mask(s, lambda d: d.polygon(poly, outline=255, width=3))
    img = _blend(img, frame, (0.03, 0.03, 0.03))
    return img, m, {"box": (int(x0 + s * 0.15), int(y0 + 6), int(x1 - s * 0.15), int(s * 0.85))}


def draw_lamp(rng, s):
    img = painted_surface(rng, s, paint(rng))
    w, h = s * rng.uniform(0.55, 0.75), s * rng.uniform(0.35, 0.5)
    cx, cy = s / 2 + rng.uniform(-6, 6), s / 2 + rng.uniform(-6, 6)
    box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    m = _mask(s, lambda d: d.rounded_rectangle(box, radius=int(h * 0.4), fill=255))
    tail = rng.random() < 0.5
    lens = np.array((0.75, 0.06, 0.05) if tail else (0.82, 0.84, 0.86), np.float32) * rng.uniform(0.85, 1.1)
    img = _blend(img, m, lens)
    for k in range(2 if tail else 3):  # reflector cups / light segments
        ex = box[0] + w * (0.2 + 0.3 * k)
        r = h * (0.22 if tail else 0.28)
        inner = _mask(s, lambda d, ex=ex, r=r: d.ellipse([ex - r, cy - r, ex + r, cy + r], fill=255))
        img = _blend(img, inner, lens * (0.6 if tail else 0.7) + (0 if tail else 0.15), 0.9)
    gloss = _mask(s, lambda d: d.ellipse([box[0] + w * 0.1, box[1] + 3, box[2] - w * 0.3, box[1] + h * 0.3], fill=255))
    img = _blend(img, _blur(gloss, 2), (1, 1, 1), 0.35)
    img = _blend(img, _mask(s, lambda d: d.rounded_rectangle(box, radius=int(h * 0.4), outline=255, width=2)),
                 (0.05, 0.05, 0.05))
    return img, m, {"box": tuple(int(v) for v in box), "interior": lens * 0.15}


def draw_tyre(rng, s, squash: float = 0.0):
    """A wheel seen from the side; ``squash`` in [0, 0.4]: how flat the tyre is (0 = fully inflated).

    A flat tyre sinks: the wheel centre drops by ``squash * r``, the tyre is cut flat by the road (a wider contact
    patch) and its sidewall bulges out at the bottom; the rim comes closer to the road.
    """
    img = painted_surface(rng, s, paint(rng))
    ground = int(s * rng.uniform(0.86, 0.95))
    img = _blend(img, _mask(s, lambda d: d.rectangle([0, ground, s, s], fill=255)), rng.uniform(0.2, 0.45, 3))
    r = s * rng.uniform(0.34, 0.4)
    cx = s / 2 + rng.uniform(-5, 5)
    cy = ground - r * (1 - squash)
    bulge = [cx - r * (1 + 0.5 * squash), ground - r * (0.2 + squash), cx + r * (1 + 0.5 * squash), ground + 2]

    def tyre_shape(d):
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if squash > 0.05:
            d.ellipse(bulge, fill=255)
    m = _mask(s, tyre_shape) * (np.arange(s)[:, None] < ground)
    img = _blend(img, m, (0.06, 0.06, 0.065))
    tread = (np.sin(np.arctan2(*np.mgrid[0:s, 0:s][::-1] - np.array([cx, cy])[:, None, None]) * 40) > 0)
    ring = m * (1 - _mask(s, lambda d: d.ellipse([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85],
                                                  fill=255)))
    img = _blend(img, ring * tread, (0.12, 0.12, 0.12))
    rr = r * 0.55
    rim = _mask(s, lambda d: d.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], fill=255))
    img = _blend(img, rim, np.array((0.7, 0.71, 0.73), np.float32) * rng.uniform(0.7, 1.1))
    for k in range(5):
        a = 2 * math.pi * k / 5 + rng.uniform(0, 1)
        gap = [(cx, cy), (cx + rr * 0.85 * math.cos(a), cy + rr * 0.85 * math.sin(a)),
               (cx + rr * 0.85 * math.cos(a + 0.5), cy + rr * 0.85 * math.sin(a + 0.5))]
        img = _blend(img, _mask(s, lambda d, gap=gap: d.polygon(gap, fill=255)), (0.1, 0.1, 0.1))
    return img, m, {"box": (int(cx - r), int(cy - r), int(cx + r), ground), "ground": ground, "cx": cx, "r": r}


# ----------------------------------------------------------------------------------------------- damage


def _point_in(rng, box, margin: float):
    x0, y0, x1, y1 = box
    return (rng.uniform(x0 + margin, max(x0 + margin + 1, x1 - margin)),
            rng.uniform(y0 + margin, max(y0 + margin + 1, y1 - margin)))


def dent(rng, img, mask, geo, level: int, s: int):
    """A dent: a shaded hollow (dark on one side, light on the other); bigger and deeper with severity."""
    k = s / 128
    radius = k * (rng.uniform(5, 7), rng.uniform(11, 14), rng.uniform(19, 24))[level]
    depth = (0.5, 0.75, 1.0)[level]
    cx, cy = _point_in(rng, geo["box"], radius * 0.8)
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    dx, dy = (x - cx) / radius, (y - cy) / radius
    bump = np.exp(-(dx ** 2 + dy ** 2) * 1.5)
    a = rng.uniform(0, 2 * math.pi)
    shade = (dx * math.cos(a) + dy * math.sin(a)) * bump * depth
    out = img * (1 + shade[..., None] * mask[..., None]) + (0.2 * shade * mask)[..., None]  # visible on black too
    if level == 2:  # a severe dent creases the panel and cracks the paint
        for _ in range(3):
            b = rng.uniform(0, math.pi)
            line = _mask(s, lambda d, b=b: d.line([(cx - radius * math.cos(b), cy - radius * math.sin(b)),
                                                   (cx + radius * math.cos(b), cy + radius * math.sin(b))],
                                                  fill=255, width=2))
            out = _blend(out, line * mask, (0.05, 0.05, 0.05), 0.6)
    return np.clip(out, 0, 1)


def scratch(rng, img, mask, geo, level: int, s: int):
    """Scratches: more, longer and deeper ones (clear coat -> primer -> bare metal) with severity."""
    k = s / 128
    n = (rng.integers(1, 3), rng.integers(3, 6), rng.integers(6, 10))[level]
    length = k * (rng.uniform(12, 22), rng.uniform(30, 48), rng.uniform(55, 85))[level]
    width = (1, 2, 3)[level]
    colour = ((0.95, 0.95, 0.95), (0.8, 0.8, 0.78), (0.62, 0.63, 0.66))[level]
    a = rng.uniform(-0.6, 0.6) + (math.pi if rng.random() < 0.5 else 0)
    cx, cy = _point_in(rng, geo["box"], 6 * k)
    lines = _mask(s, lambda d: None)
    for _ in range(n):
        ox, oy = cx + rng.normal(0, 3 + 3 * level) * k, cy + rng.normal(0, 3 + 3 * level) * k
        b = a + rng.normal(0, 0.08)
        pts = [(ox + t * length * math.cos(b) + rng.normal(0, 0.6), oy + t * length * math.sin(b) + rng.normal(0, 0.6))
               for t in np.linspace(-0.5, 0.5, 6)]
        lines = np.maximum(lines, _mask(s, lambda d, pts=pts: d.line(pts, fill=255, width=width)))
    out = img
    if level == 2:  # a scraped band of dull paint around the deep scratches
        out = _blend(out, _blur(lines, 4 * k) * mask, (0.55, 0.55, 0.55), 0.45)
    return _blend(out, lines * mask, colour, (0.6, 0.85, 0.95)[level])


def _cracks(rng, s, cx, cy, rays: int, length: float, rings: int):
    def draw(d):
        for j in range(rays):
            a = 2 * math.pi * j / rays + rng.normal(0, 0.2)
            pts, x, y = [(cx, cy)], cx, cy
            for _ in range(4):
                a += rng.normal(0, 0.25)
                step = length / 4 * rng.uniform(0.6, 1.3)
                x, y = x + step * math.cos(a), y + step * math.sin(a)
                pts.append((x, y))
            d.line(pts, fill=255, width=1)
        for q in range(rings):
            rr = length * (q + 1) / (rings + 1.5)
            d.arc([cx - rr, cy - rr, cx + rr, cy + rr], rng.uniform(0, 180), rng.uniform(200, 360), fill=255)
    return _mask(s, draw)


def cracked_glass(rng, img, mask, geo, level: int, s: int):
    """A chip (minor), a star crack (moderate), or shattered glass with several impacts (severe)."""
    k = s / 128
    impacts = (1, 1, rng.integers(2, 4))[level]
    rays = (rng.integers(4, 7), rng.integers(8, 13), rng.integers(12, 18))[level]
    length = k * (rng.uniform(5, 9), rng.uniform(20, 32), rng.uniform(35, 60))[level]
    cracks = np.zeros((s, s), np.float32)
    for _ in range(impacts):
        cx, cy = _point_in(rng, geo["box"], 4 * k)
        cracks = np.maximum(cracks, _cracks(rng, s, cx, cy, rays, length, (0, 1, 2)[level]))
        cracks = np.maximum(cracks, _mask(s, lambda d, cx=cx, cy=cy: d.ellipse([cx - 2, cy - 2, cx + 2, cy + 2],
                                                                               fill=255)))
    out = img
    if level == 2:  # crazed, whitened glass around the impacts
        out = _blend(out, _blur(cracks, 5 * k) * mask, (0.85, 0.88, 0.9), 0.5)
    return _blend(out, cracks * mask, (0.92, 0.94, 0.96), 0.9)


def broken_lamp(rng, img, mask, geo, level: int, s: int):
    """Cracked lens (minor), a missing chunk (moderate), most of the lens gone (severe)."""
    x0, y0, x1, y1 = geo["box"]
    out = img
    if level >= 1:
        share = (0, rng.uniform(0.25, 0.35), rng.uniform(0.6, 0.8))[level]
        cx = x0 + (x1 - x0) * rng.uniform(0.3, 0.7)
        cy = y0 + (y1 - y0) * rng.uniform(0.35, 0.65)
        rx, ry = (x1 - x0) * math.sqrt(share) * 0.75, (y1 - y0) * math.sqrt(share) * 0.75
        pts = [(cx + rx * rng.uniform(0.6, 1.3) * math.cos(a), cy + ry * rng.uniform(0.6, 1.3) * math.sin(a))
               for a in np.linspace(0, 2 * math.pi, 11)[:-1]]
        hole = _mask(s, lambda d: d.polygon(pts, fill=255)) * mask
        out = _blend(out, hole, geo["interior"])
        bulb = _mask(s, lambda d: d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=255)) * hole
        out = _blend(out, bulb, (0.55, 0.55, 0.5))
        edge = _mask(s, lambda d: d.line(pts + pts[:1], fill=255, width=1)) * mask
        out = _blend(out, edge, (0.95, 0.95, 0.95), 0.8)
    cx, cy = _point_in(rng, geo["box"], 4)
    cracks = _cracks(rng, s, cx, cy, (3, 5, 8)[level], (x1 - x0) * (0.35, 0.45, 0.6)[level], 0)
    return _blend(out, cracks * mask, (0.95, 0.95, 0.95), 0.85)


def flat_tyre_damage(rng, img, mask, geo, level: int, s: int):
    """The tyre is drawn flattened by :func:`draw_tyre`; a severe one also shows a folded, torn sidewall."""
    if level < 2:
        return img
    cx, r, ground = geo["cx"], geo["r"], geo["ground"]
    out = img
    for _ in range(4):
        x = cx + rng.uniform(-r, r)
        fold = _mask(s, lambda d, x=x: d.arc([x - 10, ground - 16, x + 10, ground + 4], 180, 360, fill=255, width=2))
        out = _blend(out, fold * mask, (0.3, 0.3, 0.3), 0.9)
    return out


FLAT_SQUASH = (0.1, 0.22, 0.38)  # how far a minor / moderate / severe flat tyre is squashed
PART_DRAWERS = {"panel": draw_panel, "bumper": draw_bumper, "glass": draw_glass, "lamp": draw_lamp}
DAMAGE_DRAWERS = {"dent": dent, "scratch": scratch, "cracked_glass": cracked_glass, "broken_lamp": broken_lamp,
                  "flat_tyre": flat_tyre_damage}


def render(rng: np.random.Generator, part: str, damage: str, severity: str, size: int) -> Image.Image:
    """One photo: part, damage, then lighting, viewpoint (rotation, zoom), blur and sensor noise."""
    level = SEVERITY_LEVEL.get(severity, 0)
    if part == "tyre":
        img, mask, geo = draw_tyre(rng, size, FLAT_SQUASH[level] if damage == "flat_tyre" else rng.uniform(0, 0.03))
    else:
        img, mask, geo = PART_DRAWERS[part](rng, size)
    if damage != "none":
        img = DAMAGE_DRAWERS[damage](rng, img, mask, geo, level, size)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    a = rng.uniform(0, 2 * math.pi)
    light = rng.uniform(0.7, 1.15) + rng.uniform(0, 0.25) * ((x - 0.5) * math.cos(a) + (y - 0.5) * math.sin(a))
    img = img * light[..., None] * rng.uniform(0.92, 1.08, 3)  # brightness gradient and a colour cast
    photo = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    fill = tuple(int(v) for v in np.asarray(photo).reshape(-1, 3).mean(0))
    zoom = rng.uniform(1.0, 1.12)
    photo = photo.rotate(rng.uniform(-12, 12), resample=Image.BILINEAR, fillcolor=fill)
    c = size * (1 - 1 / zoom) / 2
    photo = photo.resize((size, size), Image.BILINEAR, box=(c, c, size - c, size - c))
    if rng.random() < 0.5:
        photo = photo.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.9)))
    noisy = np.asarray(photo, np.float32) + rng.normal(0, rng.uniform(0, 6), (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
