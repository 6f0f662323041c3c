"""The node agent: runs beside one database, hosts its engine adapter and the prepare lease."""
