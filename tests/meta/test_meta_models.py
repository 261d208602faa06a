"""Meta models: image-grouped CV, training-fold z-scoring, metrics, LARS ranking, convergence warnings."""
import warnings

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import roc_auc_score

import oodseg.meta.models as meta_models
from oodseg.errors import OodsegError, OodsegWarning
from oodseg.meta.analysis import lars_ranking
from oodseg.meta.models import (classification_scores, convergence_reported, cross_val_predict, cv_splits,
                                fold_count, parse_cv)


@pytest.mark.parametrize("cv", ["image-kfold:5", "image-kfold:3", "loo"])
def test_no_image_in_train_and_test_folds(rng, cv):
    groups = rng.integers(0, 9, 300)
    splits = cv_splits(groups, cv)
    tested = np.concatenate([test for _, test in splits])
    assert sorted(tested) == list(range(300))  # every segment is tested exactly once
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])
    if cv == "loo":
        assert len(splits) == 9 and all(len(set(groups[test])) == 1 for _, test in splits)


def test_cv_needs_two_images_and_valid_spec():
    with pytest.raises(OodsegError, match="at least 2 images"):
        cv_splits(np.zeros(5), "image-kfold:5")
    for bad in ("kfold:5", "image-kfold:1", "image-kfold:x", "loo:3"):
        with pytest.raises(OodsegError, match="^cv"):
            parse_cv(bad)


def test_z_scoring_uses_training_fold_statistics_only(rng):
    """Out-of-fold predictions equal a manual reference that scales with the training fold's mean/std."""
    n = 240
    groups = np.repeat(np.arange(8), n // 8)
    X = rng.normal(size=(n, 4)) * [1, 10, 0.1, 5] + [0, 3, -2, 100]
    X[groups >= 6] += 50.0  # test images far from the others: all-data scaling would differ a lot
    y = (X[:, 0] + 0.1 * X[:, 1] + rng.normal(size=n) > 0.3).astype(int)
    t = X[:, 2] * 3 + rng.normal(size=n)
    p = cross_val_predict(X, y, groups, "image-kfold:4", "classification")
    r = cross_val_predict(X, t, groups, "image-kfold:4", "regression")
    for train, test in cv_splits(groups, "image-kfold:4"):
        mean, std = X[train].mean(0), X[train].std(0)
        ref = LogisticRegression(max_iter=2000).fit((X[train] - mean) / std, y[train])
        np.testing.assert_allclose(p[test], ref.predict_proba((X[test] - mean) / std)[:, 1], atol=1e-6)
        ref = LinearRegression().fit((X[train] - mean) / std, t[train])
        np.testing.assert_allclose(r[test], ref.predict((X[test] - mean) / std), atol=1e-8)


def test_informative_features_are_learnt_and_gbm_runs(rng):
    n = 400
    groups = rng.integers(0, 10, n)
    X = rng.normal(size=(n, 5))
    y = (X[:, 3] > 0).astype(int)
    for kind in ("logistic", "gbm"):
        p = cross_val_predict(X, y, groups, "image-kfold:5", "classification", kind)
        assert roc_auc_score(y, p) > 0.95
    scores = classification_scores(y, X[:, 3])
    assert scores["AUROC"] == pytest.approx(roc_auc_score(y, X[:, 3]))
    assert np.isnan(classification_scores(np.ones(5), np.arange(5))["AUROC"])


def test_single_class_training_fold_predicts_that_class():
    X = np.arange(12.0)[:, None]
    y = np.array([0] * 6 + [1] * 6)
    groups = np.array([0] * 6 + [1] * 6)
    p = cross_val_predict(X, y, groups, "loo", "classification")
    np.testing.assert_array_equal(p, [1] * 6 + [0] * 6)


def test_lars_ranks_the_informative_feature_first(rng):
    n = 300
    X = rng.normal(size=(n, 6))
    X[:, 5] = 7.0  # constant: never enters
    y = 2.0 * X[:, 4] + 0.5 * X[:, 1] + 0.1 * rng.normal(size=n)
    names = [f"f{i}" for i in range(6)]
    ranking = lars_ranking(X * [1, 1, 1, 1, 1000, 1], y, names)
    assert ranking[0] == ("f4", 1) and ranking[1] == ("f1", 2)
    assert "f5" not in [name for name, _ in ranking]
    assert [rank for _, rank in ranking] == list(range(1, len(ranking) + 1))


def test_fold_count_is_k_or_one_per_image():
    assert fold_count("image-kfold:5", 9) == 5 and fold_count("image-kfold:5", 3) == 3 and fold_count("loo", 7) == 7
    assert len(cv_splits(np.repeat(np.arange(3), 4), "image-kfold:5")) == 3


def test_scikit_learn_convergence_warnings_become_one_oodseg_warning(rng, monkeypatch):
    """Every fold of a 1-iteration logistic regression fails to converge: 4 folds, one oodseg line; a degenerate
    LARS path (duplicate columns) adds its own; an unrelated warning passes through unchanged."""
    X = rng.normal(size=(80, 3))
    y = (X[:, 0] + rng.normal(0, 0.5, 80) > 0).astype(int)
    groups = np.repeat(np.arange(8), 10)
    monkeypatch.setattr(meta_models, "LogisticRegression", lambda max_iter: LogisticRegression(max_iter=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with convergence_reported("meta logistic"):
            cross_val_predict(X, y, groups, "image-kfold:4", "classification")
            warnings.warn("unrelated", RuntimeWarning)
    assert [w.category for w in caught] == [RuntimeWarning, OodsegWarning]
    assert str(caught[1].message).startswith("meta logistic: scikit-learn did not converge 4 time(s); results may be "
                                             "less reliable (first: lbfgs failed to converge")
    assert "\n" not in str(caught[1].message)
    degenerate = np.round(rng.normal(size=(5, 5)), 1)
    degenerate[:, 1] = degenerate[:, 0] * 1.0000001
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with convergence_reported("meta"):
            for _ in range(20):
                lars_ranking(degenerate, rng.normal(size=5), list("abcde"))
    assert [w.category for w in caught] == [OodsegWarning] and "Regressors in active set degenerate" in str(
        caught[0].message)
