//! DNS add-on: serves cluster DNS records from the service cache (built in a later issue).
