// Lenscope demo page: sends searches as multipart POSTs to /search and swaps in the HTML fragment the
// server renders (the server does all escaping). State: the query photo (an uploaded File, or a
// catalog image path for "search with this image"), the text box, the ticked facet values, k.
(() => {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const form = $("search-form"), results = $("results"), photo = $("photo"), like = $("like");
  const q = $("q"), k = $("k"), dropzone = $("dropzone"), preview = $("query-image");
  const label = $("dropzone-label"), clear = $("clear-image");
  const maxUpload = Number(form.dataset.maxUpload);
  const pickLabel = label.innerHTML;
  const state = { file: null, like: like.value, filters: ticked() };
  let controller = null, seq = 0, objectUrl = null;

  // a file that the browser cannot draw (not an image after all): no broken-image icon
  preview.addEventListener("error", () => { preview.hidden = true; });

  function ticked() {
    return [...results.querySelectorAll(".facets input[name=f]:checked")].map((i) => i.value);
  }

  function mb(n) { return (n / 1048576).toFixed(1) + " MB"; }

  function finished(status) {
    document.body.dataset.searches = String(Number(document.body.dataset.searches || 0) + 1);
    document.body.dataset.lastStatus = status;
  }

  function showError(title, message, code) {
    const box = document.createElement("div");
    box.className = "error"; box.setAttribute("role", "alert"); box.dataset.code = code;
    const t = document.createElement("strong"); t.className = "error-title"; t.textContent = title;
    const p = document.createElement("p"); p.className = "error-message"; p.textContent = message;
    box.append(t, p);
    const wrap = document.createElement("div"); wrap.id = "results-body"; wrap.dataset.status = "error";
    wrap.append(box);
    results.replaceChildren(wrap);
    finished("error");
  }

  function setPreview(src, text) {
    if (objectUrl && src !== objectUrl) { URL.revokeObjectURL(objectUrl); objectUrl = null; }
    if (src) { preview.src = src; preview.hidden = false; clear.hidden = false; label.textContent = text; }
    else { preview.removeAttribute("src"); preview.hidden = true; clear.hidden = true; label.innerHTML = pickLabel; }
  }

  async function search() {
    if (state.file && state.file.size > maxUpload) {
      showError("Photo too large", `The photo is ${mb(state.file.size)}; the limit is ${mb(maxUpload)}. ` +
                "Use a smaller or more compressed photo.", "too_large");
      return;
    }
    const body = new FormData();
    const text = q.value.trim();
    if (text) body.append("q", text);
    if (state.file) body.append("image", state.file, state.file.name || "photo");
    else if (state.like) body.append("like", state.like);
    for (const f of state.filters) body.append("f", f);
    body.append("k", k.value);
    like.value = state.file ? "" : state.like;
    if (controller) controller.abort();
    controller = new AbortController();
    const mine = ++seq;
    results.setAttribute("aria-busy", "true");
    try {
      const resp = await fetch("/search", { method: "POST", body, signal: controller.signal });
      const html = await resp.text();
      if (mine !== seq) return;
      results.innerHTML = html;
      const fragment = $("results-body");
      const status = fragment ? fragment.dataset.status : "error";
      if (!state.file && status === "ok") history.replaceState(null, "", "/?" + fragment.dataset.query);
      finished(status);
    } catch (err) {
      if (err.name === "AbortError") return;
      showError("The Lenscope web server did not answer", String(err.message || err), "network");
    } finally {
      if (mine === seq) results.removeAttribute("aria-busy");
    }
  }

  function usePhoto(file) {
    if (!file) return;
    state.file = file; state.like = ""; state.filters = [];
    if (file.type.startsWith("image/")) {
      objectUrl = URL.createObjectURL(file);
      setPreview(objectUrl, file.name || "pasted photo");
    } else {
      setPreview(null);
      label.textContent = file.name;
    }
    search();
  }

  form.addEventListener("submit", (e) => { e.preventDefault(); state.filters = []; search(); });
  photo.addEventListener("change", () => usePhoto(photo.files[0]));
  k.addEventListener("change", () => { if (q.value.trim() || state.file || state.like) search(); });
  clear.addEventListener("click", () => {
    state.file = null; state.like = ""; like.value = ""; photo.value = ""; setPreview(null);
  });
  for (const type of ["dragenter", "dragover"]) {
    dropzone.addEventListener(type, (e) => { e.preventDefault(); dropzone.classList.add("over"); });
  }
  dropzone.addEventListener("dragleave", () => dropzone.classList.remove("over"));
  dropzone.addEventListener("drop", (e) => {
    e.preventDefault(); dropzone.classList.remove("over");
    if (e.dataTransfer && e.dataTransfer.files.length) usePhoto(e.dataTransfer.files[0]);
  });
  dropzone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); photo.click(); }
  });
  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData ? e.clipboardData.files : [])].find((f) => f.type.startsWith("image/"));
    if (item) usePhoto(item);
  });
  results.addEventListener("change", (e) => {
    if (e.target.matches(".facets input[name=f]")) { state.filters = ticked(); search(); }
  });
  results.addEventListener("click", (e) => {
    const link = e.target.closest("a.similar");
    if (!link) return;
    e.preventDefault();
    const img = link.closest(".card").querySelector(".thumb img");
    state.file = null; state.like = link.dataset.like; state.filters = []; photo.value = ""; q.value = "";
    setPreview(img ? img.src : null, "Similar to this product");
    window.scrollTo({ top: 0 });
    search();
  });
})();
