"""Quality: how good is matching on this catalog. Holds out each photo of every product with 2+ photos and
searches with it (vpm/core/evaluate.py); a batch per rerun, with a progress bar and a Stop button. Reads only, except
"Use this fit for searches", which keeps the fitted score (vpm/core/calibration.py) for a signed-in user.

A signed-in user may also compare models on the same held-out photos (vpm/models/model_compare.py): a model other than the
one searches use embeds the photos into a temporary folder, a model per rerun, never into the catalog."""

import pandas as pd
import streamlit as st

from vpm.core.errors import VpmError
from vpm.core.evaluate import LATENCY_PHOTOS, Evaluation, NothingToEvaluate, latency_cell, score_sentence
from vpm.core.presentation import plain
from vpm.faces import webapp
from vpm.models import model_compare, model_outlook

RUNNING, REPORT, STOP = "quality_evaluation", "quality_report", "quality_stop_requested"
COMPARING, COMPARED, COMPARE_STOP = "quality_comparison", "quality_comparison_report", "quality_comparison_stop"

st.title(":material/fact_check: Match quality")
st.caption(
    "How often the right product comes first on your own catalog: each photo of a product with two or more photos "
    "is held out and searched with, against every other photo. Nothing is changed."
)

matcher = webapp.get_matcher()
products = webapp.catalog_or_stop(matcher.count_products)
if not products:
    st.info("The catalog is empty: add products, each with two or more photos, then come back.",
            icon=":material/inventory_2:")
    st.page_link(webapp.CATALOG_PAGE, label="Add or import products", icon=":material/add_photo_alternate:")
    st.stop()

try:
    webapp.ensure_model(matcher)
except Exception as err:
    webapp.show_error(err, what="The image model could not be loaded")
    st.stop()


def request_stop() -> None:
    st.session_state[STOP] = True


def request_comparison_stop() -> None:
    st.session_state[COMPARE_STOP] = True


allowed = webapp.may_change()


rerank = st.toggle(
    "Verify the top matches by keypoints (as searches do)", value=matcher.rerank_default, key="quality_rerank",
    disabled=RUNNING in st.session_state,
)
if st.button("Evaluate", icon=":material/play_arrow:", type="primary", key="quality_start",
             disabled=RUNNING in st.session_state):
    st.session_state.pop(REPORT, None)
    st.session_state[STOP] = False
    try:
        st.session_state[RUNNING] = Evaluation(matcher, rerank=rerank, latency_photos=LATENCY_PHOTOS)
    except NothingToEvaluate as err:
        st.info(plain(str(err)[:1].upper() + str(err)[1:]), icon=":material/info:")
    except Exception as err:
        webapp.show_error(err, what="The evaluation could not start")

evaluation = st.session_state.get(RUNNING)
if evaluation is not None:
    if st.session_state.get(STOP):
        evaluation.stopped = True
        st.session_state[REPORT] = evaluation.report()
        del st.session_state[RUNNING]
    else:
        st.button("Stop", icon=":material/stop:", key="quality_stop", on_click=request_stop)
        st.progress(evaluation.done / max(1, evaluation.total),
                    text=f"Searched with {evaluation.done} of {evaluation.total} held-out photos…")
        evaluation.step()
        if evaluation.finished:
            st.session_state[REPORT] = evaluation.report()
            del st.session_state[RUNNING]
        st.rerun()  # the next batch (or the report) on the next run, so Stop is seen between batches


def show_report(report) -> None:
    """The report of one evaluation of the model searches use."""
    st.divider()
    if report.stopped:
        st.warning(f"Stopped after {report.queries} of {report.planned} held-out photos: the figures cover those only.",
                   icon=":material/stop_circle:")
    with st.container(horizontal=True):
        st.metric("Right product first", f"{report.recall_at_1:.0%}", help="recall@1", border=True)
        st.metric("Right product in the top 5", f"{report.recall_at_5:.0%}", help="recall@5", border=True)
        if report.threshold is not None:
            st.metric("Suggested minimum match", f"{report.threshold:.0%}",
                      help="The Search page's default threshold from this fit: it still shows 95% of the right products "
                           "that reach the top 5.", border=True)
    st.caption(
        f"{report.queries} held-out photos of {report.products} products · model {report.model_id}"
        + (" · verified by keypoints" if report.rerank else "") + (" · a sample" if report.sampled else "")
        + (f" · decoding and embedding a query photo {report.embed_p50_ms:.0f} ms (p50), {report.embed_p95_ms:.0f} ms "
           "(p95)" if report.embed_p50_ms is not None else "")
    )
    for note in report.notes:
        st.info(plain(note), icon=":material/info:")
    if report.signals:
        st.subheader("What each signal adds")
        st.caption("Recall with each signal added to the ones above it, and the time its ranking took a query (from "
                   "the stored vectors, keypoints and text); searches use the marked row.")
        st.dataframe(
            pd.DataFrame([{"Signals": s.name, "Right first": f"{s.recall_at_1:.0%}", "In top 5": f"{s.recall_at_5:.0%}",
                           "Ranking p50 / p95 ms": latency_cell(s), "Searches use it": "yes" if s.used else ""}
                          for s in report.signals]),
            hide_index=True,
        )
    if report.score_model is not None:
        show_score(report)
    if report.categories:
        st.subheader("By category")
        st.dataframe(  # whole percents, as the headline figures above
            pd.DataFrame([{"Category": c.category, "Photos": c.queries, "Right first": f"{c.recall_at_1:.0%}",
                           "In top 5": f"{c.recall_at_5:.0%}"} for c in report.categories]),
            hide_index=True,
        )
    show_confusions(report)


def show_score(report) -> None:
    st.subheader("What a match's percentage means")
    st.markdown(plain(score_sentence(report.score_model)[:1].upper() + score_sentence(report.score_model)[1:]) + ".")
    if report.calibration:
        st.caption("How often the first result was right, by the score it showed (on these held-out photos). A score "
                   "that means what it says follows the diagonal: matches shown at 80% are right 80% of the time.")
        points = pd.DataFrame({
            "Score shown": [(b.low + b.high) / 2 for b in report.calibration],
            "Right, on these photos": [b.right for b in report.calibration],
            "Right, if the score meant exactly that": [(b.low + b.high) / 2 for b in report.calibration],
        })
        st.line_chart(points, x="Score shown", y=["Right, on these photos", "Right, if the score meant exactly that"],
                      x_label="Score shown on the first result", y_label="Share that was right", height=240)
        st.dataframe(
            pd.DataFrame([{"Score": f"{b.low:.0%}-{b.high:.0%}", "First results": b.pairs,
                           "Right": f"{b.right:.0%}"} for b in report.calibration]),
            hide_index=True,
        )
    if allowed and not report.stopped:
        if st.button("Use this fit for searches", icon=":material/tune:", key="quality_calibrate",
                     help="Fits the score again on these held-out photos (and this catalog's own projection where it "
                          "helps) and keeps it: every search then scores with it. Imports do this by themselves."):
            with st.spinner("Fitting the score on this catalog…"):
                kept = matcher.calibrate()
            if kept is not None:
                st.success(f"Searches now score with a curve {kept.score.described}.", icon=":material/check_circle:")
    else:
        st.caption(f"Searches score with a curve {matcher.score_explained()}.")


def show_confusions(report) -> None:
    st.subheader("Worst confusions")
    if not report.confusions:
        st.success("Every held-out photo found its own product first.", icon=":material/check_circle:")
        return
    st.caption("A held-out photo, the wrong product that came first, and the right product (its best photo).")
    ids = sorted({c.wrong_product for c in report.confusions} | {c.query_product for c in report.confusions})
    known = matcher.files.products(ids)
    for confusion in report.confusions:
        own, wrong = known.get(confusion.query_product), known.get(confusion.wrong_product)
        with st.container(border=True):
            cells = st.columns(3)
            for cell, product, key, caption in (
                (cells[0], own, confusion.query_photo, "Query photo"),
                (cells[1], wrong, confusion.wrong_photo, f"Came first: looks {confusion.wrong_score:.0%} alike"),
                (cells[2], own, confusion.right_photo, f"Right product: looks {confusion.right_score:.0%} alike"),
            ):
                with cell:
                    picture = webapp.product_picture(product, key) if product is not None else None
                    if picture is not None:
                        st.image(picture, width=webapp.CARD_WIDTH)
                    name = product.name if product is not None else "(deleted)"
                    st.markdown(f"**{plain(name)}**")
                    st.caption(caption)


def start_comparison(picked: list[str]) -> None:
    """Load the picked models (a spinner: the first load of a model takes seconds) and keep the comparison."""
    try:
        comparison = model_compare.ModelComparison(matcher, picked, rerank=rerank)
    except VpmError as err:
        st.info(plain(str(err)[:1].upper() + str(err)[1:]), icon=":material/info:")
        return
    try:
        with st.spinner("Loading the models…"):
            comparison.load()
    except model_compare.ModelNotAvailable as err:
        comparison.close()
        st.warning(plain(model_outlook.not_loaded(err.name, err.reason)) + " Nothing was compared.",
                   icon=":material/warning:")
        return
    except Exception as err:
        comparison.close()
        webapp.show_error(err, what="The models could not be loaded")
        return
    st.session_state[COMPARE_STOP] = False
    st.session_state.pop(COMPARED, None)
    st.session_state[COMPARING] = comparison


def run_comparison(comparison) -> None:
    """One step a rerun: a model's embedding (with its progress bar) or a batch of held-out photos; Stop between."""
    if st.session_state.get(COMPARE_STOP):
        st.session_state[COMPARED] = comparison.stop()
        comparison.close()
        del st.session_state[COMPARING]
        return
    st.button("Stop", icon=":material/stop:", key="quality_compare_stop", on_click=request_comparison_stop)
    try:
        if comparison.embedding:
            bar = st.progress(0.0, text="Embedding the catalog's photos into a temporary folder…")

            def embedded(done: int, total: int, _message: str = "") -> None:
                bar.progress(done / max(1, total), text=f"Embedding the catalog's photos into a temporary folder: "
                                                        f"{done} of {total}…")

            comparison.embed_next(embedded)
        else:
            st.progress(comparison.done / max(1, comparison.total),
                        text=f"Searched with {comparison.done} of {comparison.total or '…'} held-out photos…")
            comparison.step()
            if comparison.finished:
                st.session_state[COMPARED] = comparison.report()
                comparison.close()
                del st.session_state[COMPARING]
    except Exception as err:
        comparison.close()
        del st.session_state[COMPARING]
        webapp.show_error(err, what="The comparison stopped")
        return
    st.rerun()


def show_comparison(compared) -> None:
    if compared.stopped:
        st.warning("Stopped early: the figures cover the models and held-out photos done by then.",
                   icon=":material/stop_circle:")
    if compared.columns:
        first = compared.columns[0].report
        st.caption(f"The same {first.planned} held-out photos of {first.products} products for every model"
                   + (" · verified by keypoints" if first.rerank else ""))
        st.dataframe(pd.DataFrame(model_compare.summary_rows(compared)), hide_index=True)
        by_category = model_compare.category_rows(compared)
        if by_category:
            st.caption("By category: right first · in the top 5.")
            st.dataframe(pd.DataFrame(by_category), hide_index=True)
    for note in compared.notes:
        st.info(plain(note), icon=":material/info:")


report = st.session_state.get(REPORT)
if report is not None:
    show_report(report)

st.divider()
st.subheader("Compare models on this catalog")
st.caption("Each model is evaluated on the same held-out photos, side by side. A model other than the one searches "
           "use reads every catalog photo into a temporary folder first (minutes for a large catalog); the catalog "
           "and its search index are never changed.")
if allowed:
    running = COMPARING in st.session_state
    choices = model_compare.models_on_this_machine(matcher.settings.vpm_model)
    picked = st.multiselect(
        "Models on this machine", choices, default=choices[:1], format_func=model_compare.label,
        max_selections=model_compare.MAX_MODELS, key="quality_models", disabled=running,
        help="The model searches use, the built-in one, and the models already downloaded here (CLIP, DINOv2, "
             "SigLIP 2). To compare another, download it once: python -m vpm evaluate --model NAME --model ...",
    )
    if st.button("Compare", icon=":material/compare_arrows:", key="quality_compare", disabled=running or len(picked) < 2):
        start_comparison(picked)
    if COMPARING in st.session_state:
        run_comparison(st.session_state[COMPARING])
    compared = st.session_state.get(COMPARED)
    if compared is not None:
        show_comparison(compared)
