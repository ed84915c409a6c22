/* spinenet report viewer (written by `spinenet report`, see spinenet/deploy/report_page.py).
 *
 * index.js sets window.SPINENET_REPORT: settings, the class palette and, per image, what the index needs to show,
 * count and sort at any display threshold: [number of non-crowd GT boxes (-1: no annotations), [GT class ids],
 * [class, score, flag, class, score, flag, ...], file name, width, height, has a thumbnail] with detections in
 * descending score order and flag 1 true positive, 0 false positive, 2 ignored (matched to a crowd box), -1 not
 * scored. The index shows its tiles in batches as it is scrolled, so 5,000 images cost the first view little.
 * The detail data of images k = 50n .. 50n+49 is in data/NNNN.js, which calls SPINENET_REPORT_CHUNK(n, records).
 * Text from the data is put in the page with textContent only, never as markup.
 */
(function () {
  'use strict';
  const R = window.SPINENET_REPORT;
  const SVG = 'http://www.w3.org/2000/svg';
  const $ = (id) => document.getElementById(id);
  const chunks = new Map();
  const pending = new Map();

  window.SPINENET_REPORT_CHUNK = function (n, records) {
    chunks.set(n, records);
    const waiting = pending.get(n) || [];
    pending.delete(n);
    waiting.forEach((w) => w.resolve(records));
  };

  function loadChunk(n) {
    if (chunks.has(n)) return Promise.resolve(chunks.get(n));
    return new Promise((resolve, reject) => {
      let waiting = pending.get(n);
      if (!waiting) {
        waiting = [];
        pending.set(n, waiting);
        const s = document.createElement('script');
        s.src = R.dir + '/data/' + String(n).padStart(4, '0') + '.js';
        s.onerror = () => {
          pending.delete(n);
          waiting.forEach((w) => w.reject(new Error('cannot load ' + s.src)));
        };
        document.head.appendChild(s);
      }
      waiting.push({resolve, reject});
    });
  }

  const state = {t: R.threshold, sort: 'file', cls: -1, errors: false, per: 20, page: 0, order: []};
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const svgEl = (tag, attrs) => {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  };
  const colour = (c) => R.palette[((c % R.palette.length) + R.palette.length) % R.palette.length];
  const className = (c) => (R.classes[c] !== undefined ? R.classes[c] : 'id ' + c);
  const pct = (s) => (100 * s).toFixed(1) + '%';

  /* Counts of image k at the current threshold: detections shown, TP, FP, FN and the top score. */
  function counts(k) {
    const [ngt, , d] = R.images[k];
    let n = 0, tp = 0, fp = 0, top = -1;
    for (let j = 0; j < d.length && d[j + 1] >= state.t; j += 3) {
      n++;
      if (top < 0) top = d[j + 1];
      if (d[j + 2] === 1) tp++;
      else if (d[j + 2] === 0) fp++;
    }
    return {n, tp, fp, fn: ngt >= 0 ? ngt - tp : 0, top, annotated: ngt >= 0};
  }

  function hasClass(k, c) {
    const [, gc, d] = R.images[k];
    if (gc.includes(c)) return true;
    for (let j = 0; j < d.length && d[j + 1] >= state.t; j += 3) if (d[j] === c) return true;
    return false;
  }

  const SORTS = {
    file: () => 0,
    worst: (c) => -(c.fp + c.fn),
    fn: (c) => -c.fn,
    fp: (c) => -c.fp,
    high: (c) => -c.top,
    low: (c) => c.top,
    dets: (c) => -c.n,
  };

  function computeOrder() {
    const key = SORTS[state.sort] || SORTS.file;
    const rows = [];
    state.counts = R.images.map((_, k) => counts(k));
    for (let k = 0; k < R.images.length; k++) {
      const c = state.counts[k];
      if (state.cls >= 0 && !hasClass(k, state.cls)) continue;
      if (state.errors && c.fp + c.fn === 0) continue;
      rows.push([key(c), k]);
    }
    rows.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    state.order = rows.map((r) => r[1]);
  }

  // Thumbnails are fetched as they scroll into the index's view (their src waits in data-src).
  const thumbs = new IntersectionObserver((entries) => entries.forEach((e) => {
    if (!e.isIntersecting) return;
    e.target.src = e.target.dataset.src;
    thumbs.unobserve(e.target);
  }), {root: $('index'), rootMargin: '300px'});
  const tiles = new Map();
  const TILE = 128, BATCH = 240, FIRST = 40;

  function tile(k) {
    if (tiles.has(k)) return tiles.get(k);
    const [, , , name, w, h, hasThumb] = R.images[k];
    const t = el('a', 'tile');
    t.href = '#card-' + k;
    t.dataset.k = k;
    const side = Math.max(w, h, 1), s = side > TILE ? TILE / side : Math.max(1, Math.floor(TILE / side));
    const img = el('img', s > 1 ? 'px' : '');
    img.width = Math.max(1, Math.round(w * s));
    img.height = Math.max(1, Math.round(h * s));
    img.alt = name;
    img.dataset.src = R.dir + (hasThumb ? '/thumb/' : '/img/') + String(k).padStart(5, '0') + '.jpg';
    const th = el('span', 'th');
    th.appendChild(img);
    const label = el('span', 'name', name);
    label.title = name;
    t.append(th, el('span', 'badge'), label);
    if (tiles.size < FIRST) img.src = img.dataset.src;  // the first screenful at once: part of the first view
    else thumbs.observe(img);
    tiles.set(k, t);
    return t;
  }

  function badgeText(c) {
    return c.annotated ? 'TP ' + c.tp + ' FP ' + c.fp + ' FN ' + c.fn : c.n + ' det';
  }

  let indexShown = 0;
  const more = el('div', 'more', 'more\u2026');
  function moreTiles() {
    const frag = document.createDocumentFragment();
    const end = Math.min(state.order.length, indexShown + BATCH);
    for (let i = indexShown; i < end; i++) {
      const k = state.order[i], t = tile(k), c = state.counts[k], badge = t.querySelector('.badge');
      badge.textContent = badgeText(c);
      badge.className = 'badge' + (!c.annotated ? '' : c.fp + c.fn > 0 ? ' bad' : ' ok');
      frag.appendChild(t);
    }
    indexShown = end;
    if (indexShown < state.order.length) frag.appendChild(more);
    $('index').appendChild(frag);
  }
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) moreTiles();
  }, {root: $('index'), rootMargin: '400px'}).observe(more);

  function renderIndex() {
    indexShown = 0;
    $('index').replaceChildren();
    moreTiles();
    $('shown').textContent = state.order.length + ' of ' + R.images.length + ' image(s)';
  }

  /* Label placement: the first candidate spot inside the image that overlaps no placed label. */
  const measure = document.createElement('canvas').getContext('2d');
  const FONT_PX = 12, LABEL_H = 15;

  function placeLabel(placed, box, w, h, W, H) {
    const [x0, y0, x1, y1] = box;
    const clampX = (x) => Math.max(0, Math.min(x, W - w));
    const clampY = (y) => Math.max(0, Math.min(y, H - h));
    const spots = [[x0, y0 - h], [x0, y0], [x0, y1], [x0, y1 - h]].map(([x, y]) => [clampX(x), clampY(y)]);
    const free = ([x, y]) => placed.every((p) => x >= p[0] + p[2] || x + w <= p[0] || y >= p[1] + p[3] || y + h <= p[1]);
    const spot = spots.find(free) || spots[0];
    placed.push([spot[0], spot[1], w, h]);
    return spot;
  }

  function drawBoxes(svg, rec, u) {
    const shapes = svgEl('g', {}), labels = svgEl('g', {});
    svg.append(shapes, labels);
    const placed = [], todo = [];
    const box = (b) => [Math.min(b[1], b[3]), Math.min(b[0], b[2]), Math.max(b[1], b[3]), Math.max(b[0], b[2])];
    const rect = (b, cls, stroke, extra) => {
      const [x0, y0, x1, y1] = box(b);
      const a = {x: x0, y: y0, width: x1 - x0, height: y1 - y0, class: 'box ' + cls, stroke: stroke, 'stroke-width': 2 * u};
      const r = svgEl('rect', Object.assign(a, extra || {}));
      shapes.appendChild(r);
      return r;
    };
    (rec.gts || []).forEach((g, i) => {
      const [c, y0, x0, y1, x1, crowd, by] = g;
      const missed = !crowd && (by < 0 || rec.dets[by][1] < state.t);
      const halo = rect([y0, x0, y1, x1], 'halo', '#fff', {'stroke-width': 3.5 * u});
      halo.setAttribute('stroke-opacity', '0.8');
      const r = rect([y0, x0, y1, x1], 'gt' + (missed ? ' missed' : '') + (crowd ? ' crowd' : ''), colour(c),
        {'stroke-dasharray': (crowd ? 2 * u + ' ' + 3 * u : 6 * u + ' ' + 4 * u)});
      r.dataset.gt = i;
      r.appendChild(svgEl('title', {})).textContent = 'GT ' + i + ': ' + className(c) +
        (crowd ? ' (crowd)' : missed ? ' (missed)' : ' (found by detection ' + by + ')');
      if (missed) todo.push({b: box([y0, x0, y1, x1]), text: 'missed ' + className(c), c, kind: 'missed', order: 2});
    });
    const shown = rec.dets.filter((d) => d[1] >= state.t).slice(0, R.maxBoxes);
    shown.slice().reverse().forEach((d) => {  // the highest score drawn last, on top
      const [c, s, y0, x0, y1, x1, gt, flag] = d;
      rect([y0, x0, y1, x1], 'halo', '#000', {'stroke-width': 3.5 * u, 'stroke-opacity': '0.6'});
      const kind = flag === 1 ? 'tp' : flag === 0 ? 'fp' : flag === 2 ? 'ignored' : 'det';
      const r = rect([y0, x0, y1, x1], 'det ' + kind, colour(c));
      r.appendChild(svgEl('title', {})).textContent = className(c) + ' ' + pct(s) +
        (kind === 'tp' ? ' true positive (GT ' + gt + ')' : kind === 'fp' ? ' false positive' :
          kind === 'ignored' ? ' ignored (crowd GT ' + gt + ')' : '');
      const mark = kind === 'tp' ? ' \u2713' : kind === 'fp' ? ' \u2717' : '';
      todo.push({b: box([y0, x0, y1, x1]), text: className(c) + ' ' + Math.round(100 * s) + '%' + mark, c, kind,
        order: 1, s});
    });
    todo.sort((a, b) => a.order - b.order || (b.s || 0) - (a.s || 0));
    measure.font = FONT_PX + 'px sans-serif';
    todo.forEach((l) => {
      const w = (measure.measureText(l.text).width + 6) * u, h = LABEL_H * u;
      const [x, y] = placeLabel(placed, l.b, w, h, rec.w, rec.h);
      const g = svgEl('g', {class: 'label ' + l.kind});
      g.append(svgEl('rect', {x, y, width: w, height: h, fill: l.kind === 'missed' ? '#fff' : colour(l.c)}));
      const t = svgEl('text', {x: x + 3 * u, y: y + 11.5 * u, 'font-size': FONT_PX * u});
      t.textContent = l.text;
      g.appendChild(t);
      if (l.kind === 'fp' || l.kind === 'missed') {
        g.firstChild.setAttribute('stroke', '#d00');
        g.firstChild.setAttribute('stroke-width', 1.5 * u);
      }
      labels.appendChild(g);
    });
    return shown.length;
  }

  function table(header, rows) {
    const t = el('table', 'dets'), head = t.createTHead().insertRow(), body = t.createTBody();
    header.forEach((h) => head.appendChild(el('th', '', h)));
    rows.forEach((r) => {
      const tr = body.insertRow();
      r.forEach((v) => tr.appendChild(el('td', '', v)));
    });
    return t;
  }

  function card(rec) {
    const c = state.counts[rec.k];
    const art = el('article', 'card');
    art.id = 'card-' + rec.k;
    art.dataset.k = rec.k;
    const h = el('h3', '', rec.name + ' ');
    h.appendChild(el('small', '', '(' + rec.w + '\u00d7' + rec.h + ' px, output ' + rec.out + ')'));
    art.appendChild(h);
    const pic = el('div', 'pic');
    pic.style.width = rec.dw + 'px';
    pic.style.aspectRatio = rec.dw + ' / ' + rec.dh;
    const img = el('img', rec.px ? 'px' : '');
    img.src = R.dir + '/' + rec.src;
    img.alt = rec.name;
    img.width = rec.dw;
    img.height = rec.dh;
    const svg = svgEl('svg', {viewBox: '0 0 ' + rec.w + ' ' + rec.h, preserveAspectRatio: 'none'});
    pic.append(img, svg);
    art.appendChild(pic);
    const drawn = drawBoxes(svg, rec, rec.w / rec.dw);
    const above = rec.dets.filter((d) => d[1] >= state.t);
    let line = c.annotated ? 'TP ' + c.tp + ' \u00b7 FP ' + c.fp + ' \u00b7 FN ' + c.fn + ' \u00b7 ' : '';
    line += drawn + ' detection(s) drawn at score \u2265 ' + state.t.toFixed(2);
    if (above.length > drawn) line += '; ' + (above.length - drawn) + ' more above it not drawn (--max_boxes_to_draw)';
    if (rec.n > above.length) line += '; ' + (rec.n - above.length) + ' below';
    art.appendChild(el('p', 'counts', line));
    rec.notes.forEach((n) => art.appendChild(el('p', 'note', n)));
    const det = el('details');
    det.appendChild(el('summary', '', 'detections' + (rec.gts ? ' and ground truth' : '')));
    const match = (d) => (d[7] === 1 ? 'TP: GT ' + d[6] + ' (IoU ' + d[8].toFixed(2) + ')' : d[7] === 0 ? 'FP' :
      d[7] === 2 ? 'ignored: crowd GT ' + d[6] : '');
    det.appendChild(table(['class', 'score', 'ymin', 'xmin', 'ymax', 'xmax', 'match'],
      above.map((d) => [className(d[0]), pct(d[1]), ...d.slice(2, 6).map((v) => v.toFixed(1)), match(d)])));
    if (rec.gts) {
      const found = (g) => (g[5] ? 'crowd' : g[6] >= 0 && rec.dets[g[6]][1] >= state.t ?
        'found by ' + className(rec.dets[g[6]][0]) + ' ' + pct(rec.dets[g[6]][1]) : 'missed');
      const gt = table(['GT', 'class', 'ymin', 'xmin', 'ymax', 'xmax', 'status'],
        rec.gts.map((g, i) => [String(i), className(g[0]), ...g.slice(1, 5).map((v) => v.toFixed(1)), found(g)]));
      gt.className = 'gts';
      det.appendChild(gt);
    }
    art.appendChild(det);
    return art;
  }

  let renderToken = 0;
  let done = Promise.resolve();

  function renderDetail() {
    const token = ++renderToken;
    const pages = Math.max(1, Math.ceil(state.order.length / state.per));
    state.page = Math.min(state.page, pages - 1);
    const ks = state.order.slice(state.page * state.per, (state.page + 1) * state.per);
    document.querySelectorAll('.pager .where').forEach((w) => {
      w.textContent = 'page ' + (state.page + 1) + ' of ' + pages;
    });
    const need = [...new Set(ks.map((k) => Math.floor(k / R.chunk)))];
    done = Promise.all(need.map(loadChunk)).then(() => {
      if (token !== renderToken) return;
      const frag = document.createDocumentFragment();
      ks.forEach((k) => frag.appendChild(card(chunks.get(Math.floor(k / R.chunk))[k % R.chunk])));
      $('detail').replaceChildren(frag);
    }, (err) => {
      $('detail').replaceChildren(el('p', 'note', String(err.message)));
    });
    return done;
  }

  function update(resetPage) {
    computeOrder();
    if (resetPage) state.page = 0;
    renderIndex();
    return renderDetail();
  }

  function setThreshold(v, from) {
    const t = Math.min(1, Math.max(R.minScore, Number(v)));
    if (!Number.isFinite(t)) return;
    state.t = t;
    if (from !== $('thr-range')) $('thr-range').value = t;
    if (from !== $('thr-num')) $('thr-num').value = t.toFixed(2);
    update(false);
  }

  function goPage(p) {
    const pages = Math.max(1, Math.ceil(state.order.length / state.per));
    state.page = Math.max(0, Math.min(pages - 1, p));
    return renderDetail();
  }

  $('thr-range').addEventListener('input', (e) => setThreshold(e.target.value, e.target));
  $('thr-num').addEventListener('input', (e) => setThreshold(e.target.value, e.target));
  $('sort').addEventListener('change', (e) => { state.sort = e.target.value; update(true); });
  $('cls').addEventListener('change', (e) => { state.cls = Number(e.target.value); update(true); });
  $('errors').addEventListener('change', (e) => { state.errors = e.target.checked; update(true); });
  $('per').addEventListener('change', (e) => { state.per = Number(e.target.value); update(true); });
  document.querySelectorAll('.pager').forEach((nav) => nav.addEventListener('click', (e) => {
    const go = e.target.dataset && e.target.dataset.go;
    if (!go) return;
    const last = Math.ceil(state.order.length / state.per) - 1;
    goPage({first: 0, prev: state.page - 1, next: state.page + 1, last}[go]);
  }));
  $('index').addEventListener('click', (e) => {
    const tile = e.target.closest('.tile');
    if (!tile) return;
    e.preventDefault();
    const k = Number(tile.dataset.k);
    const pos = state.order.indexOf(k);
    goPage(Math.floor(pos / state.per)).then(() => {
      const c = $('card-' + k);
      if (c) c.scrollIntoView({block: 'start'});
    });
  });

  // A link may carry a starting view: report.html#sort=worst&errors=1&t=0.5&cls=3&per=50
  const start = new URLSearchParams(location.hash.slice(1));
  if (start.has('t') && Number.isFinite(Number(start.get('t')))) {
    state.t = Math.min(1, Math.max(R.minScore, Number(start.get('t'))));
  }
  if (SORTS[start.get('sort')] && $('sort').querySelector('option[value="' + start.get('sort') + '"]')) {
    state.sort = start.get('sort');
  }
  if (start.has('cls')) state.cls = Number(start.get('cls')) || -1;
  if (start.get('errors') === '1' && R.annotated) state.errors = true;
  if ([10, 20, 50, 100].includes(Number(start.get('per')))) state.per = Number(start.get('per'));
  $('sort').value = state.sort;
  $('cls').value = String(state.cls);
  $('errors').checked = state.errors;
  $('per').value = String(state.per);
  $('thr-range').value = state.t;
  $('thr-num').value = state.t.toFixed(2);
  window.spinenetReport = {
    rendered: () => done,
    goPage,
    state,
    pages: () => Math.max(1, Math.ceil(state.order.length / state.per)),
  };
  update(true);
})();
