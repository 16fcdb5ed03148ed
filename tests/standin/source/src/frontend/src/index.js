// Stand-in for the React application: the "build" copies public/ and writes env.js.
document.getElementById("root").textContent = "AI Infra Matrix (API: " + window.REACT_APP_API_URL + ")";
