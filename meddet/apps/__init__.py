"""The applications behind the command-line commands and the demos: whole tasks on loaded objects.

- `meddet.apps.evaluate`: a model, an ensemble or a results file scored on a split (`evaluate_model`,
  `evaluate_predictions`, `evaluate_predictor`, tile level and whole image for tiled models);
- `meddet.apps.predict`: a model on images/DICOMs/folders (`predict`);
- `meddet.apps.tune`: thresholds swept on the validation split (`tune_model`);
- `meddet.apps.predictors`: the model or ensemble (`build_predictor`) and its results on a split
  (`predict_dataset`);
- `meddet.apps.report`: report sections about the evaluated model and its run (`run_sections`);
- `meddet.apps.common`: weights of a run (`resolve_weights`), output folders, results files, the split
  (`load_split`: a `meddet.data.coco.DatasetSplit`, read once and handed down);
- `meddet.apps.experiment`: seeded experiments (spec, runner; statistics in `meddet.evaluation.statistics`,
  folds in `meddet.data.splits`).

Importing them imports neither torch nor cv2 (see `meddet.apps.common`)."""
