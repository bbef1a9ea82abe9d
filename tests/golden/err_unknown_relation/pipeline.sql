CREATE SINK s AS SELECT * FROM nowhere WITH (connector = 'console');
