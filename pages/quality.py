"""Quality: how good is matching on this catalog. Holds out each photo of every product with 2+ photos and
searches with it (vpm/evaluate.py); a batch per rerun, with a progress bar and a Stop button. Reads only, except
"Use this fit for searches", which keeps the fitted score (vpm/calibration.py) for a signed-in user."""

import pandas as pd
import streamlit as st

from vpm import webapp
from vpm.evaluate import Evaluation, NothingToEvaluate, score_sentence
from vpm.presentation import plain

RUNNING, REPORT, STOP = "quality_evaluation", "quality_report", "quality_stop_requested"

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


rerank = st.toggle(
    "Verify the top matches by keypoints (as searches do)", value=matcher.rerank_default, key="quality_rerank",
    disabled=RUNNING in st.session_state,
)
if st.button("Evaluate", icon=":material/play_arrow:", type="primary", key="quality_start",
             disabled=RUNNING in st.session_state):
    st.session_state.pop(REPORT, None)
    st.session_state[STOP] = False
    try:
        st.session_state[RUNNING] = Evaluation(matcher, rerank=rerank)
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

report = st.session_state.get(REPORT)
if report is None:
    st.stop()

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
)
for note in report.notes:
    st.info(plain(note), icon=":material/info:")

if report.signals:
    st.subheader("What each signal adds")
    st.caption("Recall with each signal added to the ones above it; searches use the marked row.")
    st.dataframe(
        pd.DataFrame([{"Signals": s.name, "Right first": f"{s.recall_at_1:.0%}", "In top 5": f"{s.recall_at_5:.0%}",
                       "Searches use it": "yes" if s.used else ""} for s in report.signals]),
        hide_index=True,
    )

if report.score_model is not None:
    st.subheader("What a match's percentage means")
    st.markdown(plain(score_sentence(report.score_model)[:1].upper() + score_sentence(report.score_model)[1:]) + ".")
    if report.calibration:
        st.caption("How often the first result was right, by the score it showed (on these held-out photos). A "
                   "score that means what it says has each row's share inside its range.")
        st.dataframe(
            pd.DataFrame([{"Score": f"{b.low:.0%}-{b.high:.0%}", "First results": b.pairs,
                           "Right": f"{b.right:.0%}"} for b in report.calibration]),
            hide_index=True,
        )
    if webapp.may_change() and not report.stopped:
        if st.button("Use this fit for searches", icon=":material/tune:", key="quality_calibrate",
                     help="Fits the score again on these held-out photos (and this catalog's own projection where it "
                          "helps) and keeps it: every search then scores with it. Imports do this by themselves."):
            with st.spinner("Fitting the score on this catalog…"):
                kept = matcher.calibrate()
            if kept is not None:
                st.success(f"Searches now score with a curve {kept.score.described}.", icon=":material/check_circle:")
    else:
        st.caption(f"Searches score with a curve {matcher.score_explained()}.")

if report.categories:
    st.subheader("By category")
    st.dataframe(  # whole percents, as the headline figures above
        pd.DataFrame([{"Category": c.category, "Photos": c.queries, "Right first": f"{c.recall_at_1:.0%}",
                       "In top 5": f"{c.recall_at_5:.0%}"} for c in report.categories]),
        hide_index=True,
    )

st.subheader("Worst confusions")
if not report.confusions:
    st.success("Every held-out photo found its own product first.", icon=":material/check_circle:")
else:
    st.caption("A held-out photo, the wrong product that came first, and the right product (its best photo).")
    ids = sorted({c.wrong_product for c in report.confusions} | {c.query_product for c in report.confusions})
    known = matcher.catalog.get_many(ids)
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
