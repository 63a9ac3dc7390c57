/** @type {AppTypes.Config} */
//
// OHIF viewer (@ohif/app 3.13.2, see fetch-ohif.sh) reading from Orthanc's DICOMweb plugin,
// for a site where cad-node sends its SEG and SR results to that Orthanc.
//
// Serve this file as /app-config.js in place of the one in OHIF's dist/, with dist/ at the root
// of an origin whose /dicom-web/ is Orthanc's DICOMweb root (deploy/ohif/nginx.conf does both).
// The prebuilt dist/ loads its bundles from "/": it cannot be served under a sub-path without
// rebuilding OHIF with PUBLIC_URL set.
//
// The tests load this very file (tests/system/test_ohif.py).
window.config = {
  name: 'cad-node: Orthanc DICOMweb',
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {
    global: {
      // OHIF 3.13.2 gives a TID 1500 measurement group without an image region (cad-node's
      // per-breast and per-eye assessments, a "Finding: Absent" summary) no coordinates, then
      // reads coords[0] of it and stops drawing the SR's findings. An empty coordinate lets
      // it pass such a group over: the findings are drawn, the assessments stay in the
      // measurement list.
      onBeforeSRAddMeasurement: ({ measurement }) =>
        measurement.coords && measurement.coords.length
          ? measurement
          : { ...measurement, coords: [{}] },
    },
  },
  showStudyList: true,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  // cad-node's results are AI output a radiologist reviews: open the SEG and the SR without a
  // "load it?" prompt, and track the radiologist's own measurements without asking first.
  disableConfirmationPrompts: true,
  measurementTrackingMode: 'simplified',
  maxNumRequests: {
    interaction: 100,
    thumbnail: 10,
    prefetch: 10,
  },
  showErrorDetails: 'always',
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (cad-node results)',
        name: 'orthanc',
        // Same origin as the viewer: no CORS, one place for TLS and authentication.
        wadoUriRoot: '/dicom-web',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: false,
        supportsReject: false,
        dicomUploadEnabled: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: {
          enabled: true,
        },
      },
    },
  ],
};
