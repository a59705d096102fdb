// Swagger UI at /docs, configured from the page's data attributes (no inline script: the page's
// Content-Security-Policy allows scripts from this service only).
"use strict";
(function () {
  const element = document.getElementById("swagger-ui");
  const config = JSON.parse(element.dataset.config || "{}");
  window.ui = SwaggerUIBundle(
    Object.assign(
      {
        url: element.dataset.openapiUrl,
        dom_id: "#swagger-ui",
        layout: "BaseLayout",
        deepLinking: true,
        showExtensions: true,
        showCommonExtensions: true,
        // Never send the document to swagger.io's validator (a third-party origin).
        validatorUrl: null,
        presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
      },
      config,
    ),
  );
})();
