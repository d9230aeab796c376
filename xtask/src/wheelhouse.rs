//! Python wheelhouse for the image's interpreter (being built).
