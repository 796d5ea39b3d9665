"""fl-aggregator: aggregation scaled out over a Kafka consumer group (README "Scaling aggregation")."""
